"""int32 vector operations for the cycle engine's strip kernel (``_cycle_strips``).

One value is a strip of ``LANES`` neighbouring PEs of one array row (one lane per PE column), the
width of :data:`sysarray.engines.simd.I32x` (16 lanes with AVX-512, else 8). ``+ - & | ^`` on
these values come from :mod:`sysarray.engines.simd`; this module adds vector and scalar loads and
stores, the product of int16 values, the wrap to fewer bits and the lane shift that moves
activations one PE east. Loads and stores are unaligned and unchecked (no bounds check, no
wraparound of negative indices): the caller keeps ``i .. i + LANES - 1`` inside the 1-d
contiguous array.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.extending import intrinsic

from sysarray.engines.simd import LANES, I32x


def _pmaddwd() -> str | None:
    """The x86 multiply-add of int16 pairs into int32 lanes at this width, where numba's target has
    it (its features, as :mod:`sysarray.engines.simd` reads them), else None."""
    from numba.core import config
    from numba.core.codegen import get_host_cpu_features

    features = (config.CPU_FEATURES if config.CPU_FEATURES is not None else get_host_cpu_features()).split(",")
    if LANES == 16 and "+avx512bw" in features:
        return "llvm.x86.avx512.pmaddw.d.512"
    if LANES == 8 and "+avx2" in features:
        return "llvm.x86.avx2.pmadd.wd"
    return None


PMADDWD = _pmaddwd()

_STORED = {types.int32: ("s", 32), types.int16: ("s", 16), types.int8: ("s", 8), types.uint8: ("z", 8)}


def _vector(bits: int) -> ir.VectorType:
    return ir.VectorType(ir.IntType(bits), LANES)


def _address(context, builder, arrty, arr, index, indexty, bits: int):
    """Address of ``arr[index]`` (1-d contiguous array of ``bits``-bit integers) as a vector pointer."""
    idx = context.cast(builder, index, indexty, types.intp)
    ary = context.make_array(arrty)(context, builder, arr)
    return builder.bitcast(builder.gep(ary.data, [idx]), ir.PointerType(_vector(bits)))


def _flat(arr) -> bool:
    return isinstance(arr, types.Array) and arr.ndim == 1 and arr.layout == "C" and arr.dtype in _STORED


@intrinsic
def vload(typingctx, arr, index):
    """``arr[index:index + LANES]`` widened to int32 lanes (int32, int16 and int8 sign-extended,
    uint8 zero-extended)."""
    if not _flat(arr):
        return None
    ext, bits = _STORED[arr.dtype]

    def codegen(context, builder, sig, args):
        v = builder.load(_address(context, builder, sig.args[0], args[0], args[1], sig.args[1], bits), align=1)
        if bits == 32:
            return v
        return (builder.sext if ext == "s" else builder.zext)(v, _vector(32))
    return I32x(arr, index), codegen


@intrinsic
def vstore(typingctx, arr, index, value):
    """``arr[index:index + LANES] = value``, each lane truncated to the array's width (the caller
    stores only values the width holds)."""
    if not _flat(arr) or value is not I32x:
        return None
    bits = _STORED[arr.dtype][1]

    def codegen(context, builder, sig, args):
        v = args[2] if bits == 32 else builder.trunc(args[2], _vector(bits))
        builder.store(v, _address(context, builder, sig.args[0], args[0], args[1], sig.args[1], bits), align=1)
        return context.get_dummy_value()
    return types.none(arr, index, value), codegen


@intrinsic
def mul16(typingctx, a, b):
    """``a * b`` lane by lane for lanes where ``a`` fits int16 and ``b`` is an int16 value in the
    low half of a lane whose high half is 0 (``b & 0xFFFF``): one multiply-add of int16 pairs
    (``a_lo * b_lo + a_hi * 0``) where the target has it, else a 32-bit product of the same value."""
    if a is not I32x or b is not I32x:
        return None

    def codegen(context, builder, sig, args):
        if PMADDWD is None:
            low = builder.trunc(args[1], _vector(16))
            return builder.mul(args[0], builder.sext(low, _vector(32)))
        v16 = ir.VectorType(ir.IntType(16), 2 * LANES)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_vector(32), [v16, v16]), PMADDWD)
        return builder.call(fn, [builder.bitcast(args[0], v16), builder.bitcast(args[1], v16)])
    return I32x(a, b), codegen


@intrinsic
def sext(typingctx, v, drop):
    """Each lane's low ``32 - drop`` bits read as a signed number (shifted up by ``drop`` bits, then
    arithmetically back): the two's complement wrap to ``32 - drop`` bits."""
    if v is not I32x or not isinstance(drop, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        d = context.cast(builder, args[1], sig.args[1], types.int32)
        one = builder.insert_element(ir.Constant(_vector(32), ir.Undefined), d, ir.Constant(ir.IntType(32), 0))
        ds = builder.shuffle_vector(one, ir.Constant(_vector(32), ir.Undefined),
                                    ir.Constant(ir.VectorType(ir.IntType(32), LANES), None))
        return builder.ashr(builder.shl(args[0], ds), ds)
    return I32x(v, drop), codegen


@intrinsic
def shift_in(typingctx, v, x):
    """``[x, v[0], ..., v[LANES - 2]]``: every lane takes its west neighbour's value, lane 0 takes
    the scalar ``x`` (cast to int32)."""
    if v is not I32x or not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        xi = context.cast(builder, args[1], sig.args[1], types.int32)
        i32 = ir.IntType(32)
        one = builder.insert_element(ir.Constant(_vector(32), ir.Undefined), xi, ir.Constant(i32, 0))
        # a splat, so that a scalar read from memory becomes a broadcast load (no shuffle uop)
        west = builder.shuffle_vector(one, ir.Constant(_vector(32), ir.Undefined),
                                      ir.Constant(ir.VectorType(i32, LANES), None))
        mask = ir.Constant(ir.VectorType(i32, LANES), [LANES] + list(range(LANES - 1)))
        return builder.shuffle_vector(args[0], west, mask)
    return I32x(v, x), codegen


@intrinsic
def last(typingctx, v):
    """Lane ``LANES - 1`` as an int32 scalar."""
    if v is not I32x:
        return None

    def codegen(context, builder, sig, args):
        return builder.extract_element(args[0], ir.Constant(ir.IntType(32), LANES - 1))
    return types.int32(v), codegen


@intrinsic
def get(typingctx, arr, index):
    """``arr[index]`` of a 1-d contiguous array, widened to int32 like :func:`vload` (no wraparound
    of negative indices, no bounds check)."""
    if not _flat(arr):
        return None
    ext, bits = _STORED[arr.dtype]

    def codegen(context, builder, sig, args):
        idx = context.cast(builder, args[1], sig.args[1], types.intp)
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        v = builder.load(builder.gep(ary.data, [idx]))
        if bits == 32:
            return v
        return (builder.sext if ext == "s" else builder.zext)(v, ir.IntType(32))
    return types.int32(arr, index), codegen


@intrinsic
def put(typingctx, arr, index, value):
    """``arr[index] = value`` (an integer scalar truncated to the array's width; no wraparound, no
    bounds check)."""
    if not _flat(arr) or not isinstance(value, types.Integer):
        return None
    bits = _STORED[arr.dtype][1]

    def codegen(context, builder, sig, args):
        idx = context.cast(builder, args[1], sig.args[1], types.intp)
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        v = context.cast(builder, args[2], sig.args[2], types.int32)
        v = v if bits == 32 else builder.trunc(v, ir.IntType(bits))
        builder.store(v, builder.gep(ary.data, [idx]))
        return context.get_dummy_value()
    return types.none(arr, index, value), codegen
