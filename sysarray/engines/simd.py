"""Fixed-width SIMD values for numba kernels: ``F32x`` (float32 lanes) and ``I32x`` (int32 lanes).

Numba's loop vectorizer vectorizes innermost loops over arrays, so a sum of many terms per
element is a pass over a buffer per few terms (a load and a store per pass). With these types a
kernel keeps per-lane accumulators in registers across a loop of any length: one load and one
fused multiply-add per term (the direct psum replay's segment sums).

``LANES`` lanes per value: 16 (one AVX-512 register) or 8 (one AVX2 register), from the target.
Loads and stores are unaligned, unchecked and unmasked: the caller keeps ``i .. i + LANES - 1``
inside the array.
"""
from __future__ import annotations

import operator
import os

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.extending import intrinsic, models, overload, register_model


def _target_lanes() -> int:
    """16 lanes where numba's target has AVX-512 (one register), else 8 (one AVX2 register): with
    16 lanes split over two AVX2 registers the kernels' accumulators no longer fit the sixteen
    registers and spill.
    Numba's own choice of features (``NUMBA_CPU_FEATURES``, else the host's), which also keys its
    on-disk cache, so cached kernels always match this width. ``SYSARRAY_SIMD_LANES`` overrides it
    for tests, only with a ``NUMBA_CACHE_DIR`` of its own: the cache does not know the width, and a
    kernel cached at another width would read past its runs."""
    forced = os.environ.get("SYSARRAY_SIMD_LANES")
    if forced:
        if forced not in ("4", "8", "16"):
            raise ValueError(f"SYSARRAY_SIMD_LANES must be 4, 8 or 16. Got {forced!r} instead.")
        if not os.environ.get("NUMBA_CACHE_DIR"):
            raise ValueError("SYSARRAY_SIMD_LANES needs NUMBA_CACHE_DIR set to a directory used with that width only.")
        return int(forced)
    from numba.core import config
    from numba.core.codegen import get_host_cpu_features

    features = config.CPU_FEATURES if config.CPU_FEATURES is not None else get_host_cpu_features()
    return 16 if "+avx512f" in features.split(",") else 8


LANES = _target_lanes()


def _target_has_vnni() -> bool:
    """Whether numba's target has AVX-512 VNNI (``vpdpbusd``) at this module's 16 lanes."""
    if LANES != 16:
        return False
    from numba.core import config
    from numba.core.codegen import get_host_cpu_features

    features = config.CPU_FEATURES if config.CPU_FEATURES is not None else get_host_cpu_features()
    return "+avx512vnni" in features.split(",")


# int8 dot products in 32-bit lanes (:func:`dpbusd`): four multiply-adds per lane and instruction
VNNI = _target_has_vnni()


class _VectorType(types.Type):
    def __init__(self, name: str, element: ir.Type) -> None:
        self.element = element
        super().__init__(name=name)


F32x = _VectorType(f"F32x{LANES}", ir.FloatType())
I32x = _VectorType(f"I32x{LANES}", ir.IntType(32))


class _VectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.VectorType(fe_type.element, LANES))


register_model(type(F32x))(_VectorModel)


def _splat(builder, value, element):
    vec = ir.VectorType(element, LANES)
    one = builder.insert_element(ir.Constant(vec, ir.Undefined), value, ir.Constant(ir.IntType(32), 0))
    zeros = ir.Constant(ir.VectorType(ir.IntType(32), LANES), None)  # every lane takes lane 0
    return builder.shuffle_vector(one, ir.Constant(vec, ir.Undefined), zeros)


def _contiguous(arr, dtype) -> bool:
    """A 1-d C-contiguous array of ``dtype`` (the loads and stores ignore strides)."""
    return isinstance(arr, types.Array) and arr.dtype == dtype and arr.ndim == 1 and arr.layout == "C"


def _pointer(context, builder, arrty, arr, index, element):
    """Address of ``arr[index]`` (1-d contiguous array) as a pointer to a LANES vector."""
    ary = context.make_array(arrty)(context, builder, arr)
    ptr = builder.gep(ary.data, [index])
    return builder.bitcast(ptr, ir.PointerType(ir.VectorType(element, LANES)))


@intrinsic
def f32_zeros(typingctx):
    """All lanes 0.0."""
    def codegen(context, builder, sig, args):
        return ir.Constant(ir.VectorType(ir.FloatType(), LANES), None)
    return F32x(), codegen


@intrinsic
def i32_zeros(typingctx):
    """All lanes 0."""
    def codegen(context, builder, sig, args):
        return ir.Constant(ir.VectorType(ir.IntType(32), LANES), None)
    return I32x(), codegen


def _loader(dtype, element: ir.Type, vector: _VectorType, doc: str):
    @intrinsic
    def load(typingctx, arr, index):
        if not _contiguous(arr, dtype):
            return None

        def codegen(context, builder, sig, args):
            idx = context.cast(builder, args[1], sig.args[1], types.intp)
            return builder.load(_pointer(context, builder, sig.args[0], args[0], idx, element), align=4)
        return vector(arr, index), codegen
    load.__doc__ = doc
    return load


load = _loader(types.float32, ir.FloatType(), F32x, "``arr[index:index + LANES]`` of a 1-d contiguous float32 array.")
load_i32 = _loader(types.int32, ir.IntType(32), I32x, "``arr[index:index + LANES]`` of a 1-d contiguous int32 array.")


@intrinsic
def fma(typingctx, acc, weight, x):
    """``acc + weight * x`` lane by lane, fused (one rounding), ``weight`` a float32 scalar."""
    if acc is not F32x or x is not F32x:
        return None

    def codegen(context, builder, sig, args):
        w = context.cast(builder, args[1], sig.args[1], types.float32)
        ws = _splat(builder, w, ir.FloatType())
        vec = ir.VectorType(ir.FloatType(), LANES)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec, vec, vec]),
                                            f"llvm.fma.v{LANES}f32")
        return builder.call(fn, [ws, args[2], args[0]])
    return F32x(acc, weight, x), codegen


@intrinsic
def dpbusd(typingctx, acc, u8, s8):
    """``acc + sum over j < 4 of u8[4i + j] * s8[4i + j]`` in each int32 lane ``i``: the bytes of
    ``u8`` unsigned, of ``s8`` signed, the sum wrapping (``vpdpbusd``; only where :data:`VNNI`)."""
    if acc is not I32x or u8 is not I32x or s8 is not I32x:
        return None

    def codegen(context, builder, sig, args):
        vec = ir.VectorType(ir.IntType(32), LANES)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec, vec, vec]),
                                            f"llvm.x86.avx512.vpdpbusd.{32 * LANES}")
        return builder.call(fn, list(args))
    return I32x(acc, u8, s8), codegen


@intrinsic
def byte_windows(typingctx, arr, index):
    """Lane ``i`` the 32-bit word of bytes ``arr[index + i .. index + i + 3]`` (little-endian), for
    ``i < LANES``: overlapping windows of a 1-d contiguous uint8 array, from one load of
    ``2 * LANES`` bytes and one byte shuffle (the caller keeps them inside the array)."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.uint8 and arr.ndim == 1 and arr.layout == "C"):
        return None

    def codegen(context, builder, sig, args):
        idx = context.cast(builder, args[1], sig.args[1], types.intp)
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        src = ir.VectorType(ir.IntType(8), 2 * LANES)
        data = builder.load(builder.bitcast(builder.gep(ary.data, [idx]), ir.PointerType(src)), align=1)
        mask = ir.Constant(ir.VectorType(ir.IntType(32), 4 * LANES), [i + j for i in range(LANES) for j in range(4)])
        words = builder.shuffle_vector(data, ir.Constant(src, ir.Undefined), mask)
        return builder.bitcast(words, ir.VectorType(ir.IntType(32), LANES))
    return I32x(arr, index), codegen


@intrinsic
def to_i32(typingctx, x):
    """float32 lanes holding integers -> int32 lanes (truncation); int32 lanes as they are."""
    if x is I32x:
        return I32x(x), lambda context, builder, sig, args: args[0]
    if x is not F32x:
        return None

    def codegen(context, builder, sig, args):
        return builder.fptosi(args[0], ir.VectorType(ir.IntType(32), LANES))
    return I32x(x), codegen


def _binary(op: str):
    @intrinsic
    def fn(typingctx, a, b):
        if a is not I32x or b is not I32x:
            return None

        def codegen(context, builder, sig, args):
            return getattr(builder, op)(args[0], args[1])
        return I32x(a, b), codegen
    return fn


add = _binary("add")
sub = _binary("sub")
and_ = _binary("and_")
or_ = _binary("or_")
xor = _binary("xor")


def _operator(op, fn) -> None:
    """``a <op> b`` on two int32 vectors is ``fn(a, b)``: generic code written with operators, such
    as :func:`sysarray.engines.registers.force`, runs on vectors unchanged."""
    @overload(op)
    def impl(a, b):
        if a is I32x and b is I32x:
            return lambda a, b: fn(a, b)
        return None


for _op, _fn in ((operator.add, add), (operator.sub, sub), (operator.and_, and_), (operator.or_, or_),
                 (operator.xor, xor)):
    _operator(_op, _fn)


@intrinsic
def i32_splat(typingctx, value):
    """Every lane ``value`` (an integer scalar, cast to int32)."""
    if not isinstance(value, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = context.cast(builder, args[0], sig.args[0], types.int32)
        return _splat(builder, v, ir.IntType(32))
    return I32x(value), codegen


@intrinsic
def i32_store(typingctx, arr, index, value):
    """``arr[index:index + LANES] = value`` into a 1-d contiguous int32 array."""
    if not _contiguous(arr, types.int32) or value is not I32x:
        return None

    def codegen(context, builder, sig, args):
        idx = context.cast(builder, args[1], sig.args[1], types.intp)
        ptr = _pointer(context, builder, sig.args[0], args[0], idx, ir.IntType(32))
        builder.store(args[2], ptr, align=4)
        return context.get_dummy_value()
    return types.none(arr, index, value), codegen


def _interleave_masks(d: int) -> tuple[list[int], list[int]]:
    """Shuffle masks of one round of the lane transpose: rows ``i`` and ``i + d`` swap their
    off-diagonal blocks of ``d`` lanes (lanes 0..LANES-1 of the first row, LANES.. of the second)."""
    lo, hi = [], []
    for lane in range(LANES):
        h, r = lane - lane % (2 * d), lane % (2 * d)
        lo.append(lane if r < d else LANES + h + r - d)
        hi.append(h + d + r if r < d else LANES + lane)
    return lo, hi


@intrinsic
def transpose_block(typingctx, src, src_at, src_step, dst, dst_at, dst_step):
    """A LANES x LANES float32 block transposed from ``src`` to ``dst`` (1-d contiguous arrays):
    ``dst[dst_at + k*dst_step + i] = src[src_at + i*src_step + k]`` for ``i, k < LANES`` (rows
    loaded whole, ``log2(LANES)`` rounds of two-row shuffles, columns stored whole)."""
    if not (_contiguous(src, types.float32) and _contiguous(dst, types.float32)):
        return None

    def codegen(context, builder, sig, args):
        intp = lambda i: context.cast(builder, args[i], sig.args[i], types.intp)  # noqa: E731
        s_at, s_step, d_at, d_step = intp(1), intp(2), intp(4), intp(5)
        rows = []
        for i in range(LANES):
            at = builder.add(s_at, builder.mul(s_step, ir.Constant(s_at.type, i)))
            rows.append(builder.load(_pointer(context, builder, sig.args[0], args[0], at, ir.FloatType()), align=4))
        d = LANES // 2
        while d:
            lo, hi = (ir.Constant(ir.VectorType(ir.IntType(32), LANES), m) for m in _interleave_masks(d))
            new = list(rows)
            for i in range(LANES):
                if not i & d:
                    new[i] = builder.shuffle_vector(rows[i], rows[i + d], lo)
                    new[i + d] = builder.shuffle_vector(rows[i], rows[i + d], hi)
            rows = new
            d //= 2
        for k in range(LANES):
            at = builder.add(d_at, builder.mul(d_step, ir.Constant(d_at.type, k)))
            builder.store(rows[k], _pointer(context, builder, sig.args[3], args[3], at, ir.FloatType()), align=4)
        return context.get_dummy_value()
    return types.none(src, src_at, src_step, dst, dst_at, dst_step), codegen
