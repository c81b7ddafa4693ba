"""Speed of the two engines: the cycle engine's clock rate and the fast engine's cost over a plain GEMM.

Run from the repository root::

    .venv/bin/python benchmarks/bench_engines.py            # full run
    .venv/bin/python benchmarks/bench_engines.py --quick    # smoke run: smaller problems

Writes ``OUT/bench_engines.json`` (default ``benchmarks/results``) and prints the tables. What is
measured (see benchmarks/README.md):

0. JIT: first-call (compile) time of every engine and dataflow, kept out of all other timings.
1. Cycle engine throughput in PE-register updates per second (cycles x R x C / s) on a WS
   32x32, 128x128 and 256x256 array, fault-free and with 1% faulty PEs (psum + act), with numba's
   threads and with one, against a naive single-threaded numba clock loop (:func:`naive_ws_clock`)
   on the same GEMM.
2. ResNet-18 (ImageNet 224x224, batch 1) clocked layer by layer, values included, on a WS 32x32
   array with the cycle engine.
3. Fast engine on conv-sized GEMMs (WS 32x32, uint8 activations) against ``torch._int_mm`` and the
   exact float32 GEMM (``exact_matmul``): fault-free, 1% PEs with psum faults, 1% PEs with faults
   in all three registers; verified bit for bit against the cycle engine on a slice. The target
   compares the psum-faulty engine with the faster of the two GEMMs on the machine at hand.
4. The same fast-engine ratios for OS and IS (and WS) on one conv GEMM.

Every timing is the median of ``--repeats`` calls after a warm-up call; calls that are compared
are timed round-robin. Data and fault maps are seeded; the JSON records the machine.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import sysarray.runtime

TUNING = sysarray.runtime.configure()  # a program: tuned first, before numba and torch load

import numpy as np  # noqa: E402
from numba import njit  # noqa: E402

if __package__ in (None, ""):  # run as a script: make `benchmarks._common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (  # noqa: E402
    CpuMonitor,
    IdleGate,
    describe_tuning,
    fastest_exact_gemm,
    format_table,
    load_average,
    median,
    provenance,
    time_once,
    time_round_robin,
    use_fresh_numba_cache,
    write_json,
)

REPO = Path(__file__).resolve().parent.parent
SCALESIM_RESNET18_32X32_S = 300.0  # SCALE-Sim v2 on ResNet-18, 32x32 (timing only): a reference, not measured
CYCLE_TARGET_128 = 6e9  # PE-register updates per second on 128x128 (2 threads)
FAST_TARGET = 3.0  # fast engine with 1% psum-faulty PEs over the machine's fastest exact GEMM

# (R, M, K, N): conv-sized GEMMs for the clock-rate measurement.
CYCLE_CASES = {
    "full": [(32, 3136, 576, 64), (128, 3136, 576, 256), (256, 3136, 576, 256)],
    "quick": [(32, 784, 576, 64), (128, 392, 576, 256), (256, 392, 576, 256)],
}
# (M, K, N): conv GEMMs for the fast engine (im2col of ResNet/VGG-style 3x3 layers).
FAST_GEMMS = {
    "full": [(12544, 576, 64), (10000, 600, 64), (3136, 1152, 128), (784, 2304, 256)],
    "quick": [(784, 576, 64), (196, 1152, 128)],
}
DATAFLOW_GEMM = {"full": (12544, 576, 64), "quick": (784, 576, 64)}
RESNET_IMAGE = {"full": 224, "quick": 56}
VERIFY_ROWS = 96  # stream rows of the slice verified against the cycle engine
PE_RATE = 0.01


# --------------------------------------------------------------------------- the naive baseline
@njit(cache=False)
def naive_ws_clock(a, w, R, C):
    """The obvious WS clock loop: every cycle, every PE shifts its act and adds into the psum.

    a: (M, K) int32, w: (K, N) int32. Fault-free, single-threaded, no tricks: the weight
    preload shifts the weights down R cycles per fold, then for ``M + R + C - 2`` cycles every
    PE (visited bottom-right to top-left so each reads its neighbours' previous values) latches
    its west neighbour's act and computes ``psum = psum_above + act * w``; the south edge is
    added into the int32 output. Returns (y (M, N) int32, cycles).
    """
    M, K = a.shape
    N = w.shape[1]
    out = np.zeros((M, N), dtype=np.int32)
    act = np.zeros((R, C), dtype=np.int32)
    psum = np.zeros((R, C), dtype=np.int32)
    wreg = np.zeros((R, C), dtype=np.int32)
    cycles = 0
    for fc in range((N + C - 1) // C):
        for fr in range((K + R - 1) // R):
            for t in range(R):  # weight preload down the columns
                for r in range(R - 1, 0, -1):
                    for c in range(C):
                        wreg[r, c] = wreg[r - 1, c]
                k = fr * R + R - 1 - t
                for c in range(C):
                    n = fc * C + c
                    wreg[0, c] = w[k, n] if (k < K and n < N) else 0
                cycles += 1
            act[:, :] = 0
            psum[:, :] = 0
            for t in range(M + R + C - 2):
                for r in range(R - 1, -1, -1):
                    for c in range(C - 1, -1, -1):
                        if c > 0:
                            act[r, c] = act[r, c - 1]
                        else:
                            m = t - r
                            k = fr * R + r
                            act[r, 0] = a[m, k] if (0 <= m < M and k < K) else 0
                        above = psum[r - 1, c] if r > 0 else 0
                        psum[r, c] = above + act[r, c] * wreg[r, c]
                for c in range(C):
                    m = t - (R - 1) - c
                    n = fc * C + c
                    if 0 <= m < M and n < N:
                        out[m, n] += psum[R - 1, c]
                cycles += 1
    return out, cycles


# --------------------------------------------------------------------------- workloads
def _out_size(h: int, k: int, stride: int, pad: int) -> int:
    return (h + 2 * pad - k) // stride + 1


def resnet18_gemms(image: int = 224) -> list[dict[str, Any]]:
    """The im2col GEMMs of torchvision's ResNet-18 at ``image x image``, batch 1.

    Padding-aware output sizes (conv1 7x7/2 pad 3, max-pool 3x3/2 pad 1, 3x3 convs pad 1,
    1x1 downsample convs pad 0): M = out_h * out_w, K = kh * kw * cin, N = cout; fc 512 -> 1000
    is M = 1.
    """
    layers = []

    def conv(name, h, cin, cout, k, s, p):
        ho = _out_size(h, k, s, p)
        layers.append({"name": name, "in_hw": h, "kernel": k, "stride": s, "pad": p, "cin": cin, "cout": cout,
                       "out_hw": ho, "M": ho * ho, "K": k * k * cin, "N": cout})
        return ho

    h = conv("conv1", image, 3, 64, 7, 2, 3)
    h = _out_size(h, 3, 2, 1)  # max-pool
    cin = 64
    for stage, (cout, stride) in enumerate([(64, 1), (128, 2), (256, 2), (512, 2)], start=1):
        for block in range(2):
            s = stride if block == 0 else 1
            pre = f"layer{stage}.{block}"
            ho = conv(f"{pre}.conv1", h, cin, cout, 3, s, 1)
            conv(f"{pre}.conv2", ho, cout, cout, 3, 1, 1)
            if s != 1 or cin != cout:
                conv(f"{pre}.downsample", h, cin, cout, 1, s, 0)
            cin, h = cout, ho
    layers.append({"name": "fc", "cin": 512, "cout": 1000, "M": 1, "K": 512, "N": 1000})
    return layers


def _operands(rng: np.random.Generator, M: int, K: int, N: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 activations (M, K) and int8 weights (K, N), uniform over their full ranges."""
    a = rng.integers(0, 256, size=(M, K), dtype=np.uint8)
    w = rng.integers(-128, 128, size=(K, N), dtype=np.int8)
    return a, w


def _exact_ref(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Plain integer a @ w, int64 (numpy, chunked over M to bound memory)."""
    w64 = w.astype(np.int64)
    return np.concatenate([a[i:i + 4096].astype(np.int64) @ w64 for i in range(0, a.shape[0], 4096)])


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- 0. JIT
def bench_jit(ctx) -> dict[str, Any]:
    """First call (compile or cache load) and second call of each engine on a tiny faulty GEMM."""
    sa, FaultMap, ArrayConfig = ctx["sysarray"], ctx["FaultMap"], ctx["ArrayConfig"]
    import torch
    from sysarray.engines import _cycle_kernels, _cycle_strips, fast, psum

    rng = np.random.default_rng(1000)
    a, w = _operands(rng, 70, 70, 70)
    fm_seed = next(s for s in range(1, 100)  # a map with stuck bits in all three registers: every code path
                   if len(FaultMap.random(ArrayConfig(32, 32), 0.02, seed=s).registers()) == 3)
    rows = []
    for df in ("ws", "os", "is"):
        cfg = ArrayConfig(32, 32, df)
        fm = FaultMap.random(cfg, 0.02, seed=fm_seed)
        for engine in ("cycle", "fast"):
            if engine == "cycle":
                def call():
                    return sa.simulate_gemm(a, w, cfg, fm, engine="cycle")
            else:
                at, wt = torch.from_numpy(a), torch.from_numpy(w)

                def call():
                    return fast.fast_gemm(at, wt, cfg, fm)
            first, _ = time_once(call)
            second, _ = time_once(call)
            rows.append({"engine": engine, "dataflow": df, "first_call_s": first, "second_call_s": second})
    a32, w32 = a.astype(np.int32), w.astype(np.int32)
    first, _ = time_once(lambda: naive_ws_clock(a32, w32, 32, 32))
    second, _ = time_once(lambda: naive_ws_clock(a32, w32, 32, 32))
    rows.append({"engine": "naive (this file)", "dataflow": "ws", "first_call_s": first, "second_call_s": second})

    def cache_stats(disp):
        st = disp.stats
        return {"hits": int(sum(st.cache_hits.values())), "misses": int(sum(st.cache_misses.values()))}

    kernels = {
        "stationary_gemm": _cycle_strips.stationary_gemm,
        "os_gemm": _cycle_kernels.os_gemm,
        "psum.chain_totals_cpu": psum.chain_totals_cpu.parallel,
        "fast._accumulate_chain": fast._accumulate_chain,
    }
    return {
        "numba_cache_dir": ctx["numba_cache_dir"],
        "fresh_cache": ctx["fresh_cache"],
        "calls": rows,
        "numba_cache": {k: cache_stats(v) for k, v in kernels.items()},
    }


# --------------------------------------------------------------------------- 1. cycle engine
def bench_cycle(ctx, mode: str, repeats: int, seed: int) -> tuple[list[dict[str, Any]], bool]:
    sa, FaultMap, ArrayConfig = ctx["sysarray"], ctx["FaultMap"], ctx["ArrayConfig"]
    import numba
    import torch
    from sysarray.engines.fast import fast_gemm

    results, ok = [], True
    threads = numba.get_num_threads()
    for R, M, K, N in CYCLE_CASES[mode]:
        cfg = ArrayConfig(R, R)
        rng = np.random.default_rng(seed)
        a, w = _operands(rng, M, K, N)
        a32, w32 = a.astype(np.int32), w.astype(np.int32)
        fm = FaultMap.random(cfg, PE_RATE, registers=("psum", "act"), seed=seed)
        _log(f"cycle engine {R}x{R}, GEMM M={M} K={K} N={N}")

        def one_thread(faults):
            numba.set_num_threads(1)
            try:
                return sa.simulate_gemm(a, w, cfg, faults, engine="cycle")
            finally:
                numba.set_num_threads(threads)

        calls = {
            "engine_fault_free": lambda: sa.simulate_gemm(a, w, cfg, None, engine="cycle"),
            "engine_faulty": lambda: sa.simulate_gemm(a, w, cfg, fm, engine="cycle"),
            "engine_fault_free_1thread": lambda: one_thread(None),
            "engine_faulty_1thread": lambda: one_thread(fm),
            "naive_fault_free": lambda: naive_ws_clock(a32, w32, R, R),
        }
        t, cont = ctx["gate"].measure(lambda: time_round_robin(calls, repeats))
        # Untimed checks, so a fast but wrong loop cannot pass: every result and cycle count must agree.
        y_ff, st = sa.simulate_gemm(a, w, cfg, None, engine="cycle")
        y_fm, st_fm = sa.simulate_gemm(a, w, cfg, fm, engine="cycle")
        y_nv, cyc_nv = naive_ws_clock(a32, w32, R, R)
        ref = _exact_ref(a, w)
        y_fast = fast_gemm(torch.from_numpy(a), torch.from_numpy(w), cfg, fm).numpy()
        checks = {
            "engine_fault_free_equals_gemm": bool(np.array_equal(y_ff, ref)),
            "naive_equals_gemm": bool(np.array_equal(y_nv, ref)),
            "naive_cycles_equal_engine_cycles": int(cyc_nv) == st.cycles == st_fm.cycles,
            "engine_faulty_equals_fast_engine": bool(np.array_equal(y_fm, y_fast)),
            "faults_change_output": not np.array_equal(y_fm, ref),
        }
        ok &= all(v for k, v in checks.items() if k != "faults_change_output")
        updates = st.cycles * R * R
        rate = {k: updates / v["median_s"] for k, v in t.items()}
        results.append({
            "array": f"{R}x{R}", "dataflow": "ws", "M": M, "K": K, "N": N, "act_dtype": "uint8",
            "cycles": st.cycles, "pe_updates": updates, "faulty_pes": fm.n_faulty_pes, "stuck_bits": len(fm),
            "fault_registers": ["psum", "act"], "fault_seed": seed, "numba_threads": threads, "kernel": "strips",
            "timings": t,
            "updates_per_s": rate,
            "speedup_vs_naive": {
                "fault_free": t["naive_fault_free"]["median_s"] / t["engine_fault_free"]["median_s"],
                "faulty": t["naive_fault_free"]["median_s"] / t["engine_faulty"]["median_s"],
                "fault_free_1thread": t["naive_fault_free"]["median_s"] / t["engine_fault_free_1thread"]["median_s"],
            },
            "checks": checks, "contention": cont,
        })
        if R == 128:
            results[-1]["target_updates_per_s"] = CYCLE_TARGET_128
            results[-1]["target_met"] = {k: rate[k] >= CYCLE_TARGET_128 for k in ("engine_fault_free", "engine_faulty")}
    return results, ok


# --------------------------------------------------------------------------- 2. ResNet-18
def bench_resnet(ctx, mode: str, repeats: int, seed: int) -> tuple[dict[str, Any], bool]:
    sa, FaultMap, ArrayConfig = ctx["sysarray"], ctx["FaultMap"], ctx["ArrayConfig"]
    import torch
    from sysarray.engines.exact import exact_matmul
    from sysarray.engines.fast import fast_gemm
    from sysarray.timing import gemm_timing

    image = RESNET_IMAGE[mode]
    cfg = ArrayConfig(32, 32)
    layers = resnet18_gemms(image)
    rng = np.random.default_rng(seed)
    data = [_operands(rng, L["M"], L["K"], L["N"]) for L in layers]
    fm = FaultMap.random(cfg, PE_RATE, registers=("psum", "act"), seed=seed)
    n_rep = 1 if mode == "quick" else min(3, repeats)
    timing_cycles = [gemm_timing(L["M"], L["K"], L["N"], cfg).cycles for L in layers]
    chips = {"fault_free": None, "faulty_1pct_psum_act": fm}
    ok = True
    cycles: dict[str, list[int]] = {}
    good: dict[str, bool] = {}
    for variant, faults in chips.items():
        # Untimed pass (also the warm-up): every layer's values and cycles are checked.
        _log(f"ResNet-18 {image}x{image} on 32x32 WS, cycle engine, {variant}: checking every layer")
        cycles[variant], good[variant] = [], True
        for L, (a, w) in zip(layers, data):
            y, st = sa.simulate_gemm(a, w, cfg, faults, engine="cycle")
            at, wt = torch.from_numpy(a), torch.from_numpy(w)
            ref = exact_matmul(at, wt, 255, 128).numpy() if faults is None else fast_gemm(at, wt, cfg, faults).numpy()
            if not np.array_equal(y, ref):
                good[variant] = False
                _log(f"  MISMATCH in layer {L['name']} ({variant})")
            cycles[variant].append(st.cycles)
        good[variant] &= cycles[variant] == timing_cycles
        ok &= good[variant]

    def passes():
        # Whole-network passes, the two chips alternating, so a slow spell hits both alike.
        per_layer = {v: [[] for _ in layers] for v in chips}
        for _ in range(n_rep):
            for variant, faults in chips.items():
                for i, (a, w) in enumerate(data):
                    dt, _ = time_once(lambda: sa.simulate_gemm(a, w, cfg, faults, engine="cycle"))
                    per_layer[variant][i].append(dt)
        return per_layer

    _log(f"ResNet-18 {image}x{image}: timing {n_rep} pass(es) of each chip")
    per_layer_all, cont = ctx["gate"].measure(passes)
    variants: dict[str, Any] = {}
    for variant in chips:
        per_layer = per_layer_all[variant]
        totals = [sum(ts[r] for ts in per_layer) for r in range(n_rep)]
        total_cycles = int(sum(cycles[variant]))
        total_s = median(totals)
        variants[variant] = {
            "total_s": total_s, "total_s_runs": totals, "total_cycles": total_cycles,
            "pe_updates": total_cycles * cfg.n_pes, "updates_per_s": total_cycles * cfg.n_pes / total_s,
            "cycles_match_timing_formulas": cycles[variant] == timing_cycles, "verified": good[variant],
            "contention": cont,
            "layers": [{**L, "cycles": int(c), "median_s": median(ts)}
                       for L, c, ts in zip(layers, cycles[variant], per_layer)],
        }
    return {
        "model": "resnet18", "image": image, "batch": 1, "array": "32x32", "dataflow": "ws", "engine": "cycle",
        "n_gemms": len(layers), "macs": int(sum(L["M"] * L["K"] * L["N"] for L in layers)),
        "repeats": n_rep, "fault_map": {"pe_rate": PE_RATE, "registers": ["psum", "act"], "seed": seed,
                                        "faulty_pes": fm.n_faulty_pes},
        "scalesim_v2_reference_s": SCALESIM_RESNET18_32X32_S if image == 224 else None,
        "scalesim_reference_note": "SCALE-Sim v2's reference time for ResNet-18 on 32x32 (timing only): over 5 minutes; "
                                   "not measured here",
        "variants": variants, "verified": ok,
    }, ok


# --------------------------------------------------------------------------- 3/4. fast engine
def _fast_case(ctx, M, K, N, cfg, repeats, seeds, with_int_mm, data_seed, label):
    """Time (a) _int_mm, (b) exact_matmul, (c) fast fault-free, (d) psum faults, (e) all registers."""
    sa, FaultMap = ctx["sysarray"], ctx["FaultMap"]
    import torch
    from sysarray.engines.exact import exact_matmul
    from sysarray.engines.fast import fast_gemm

    rng = np.random.default_rng(data_seed)
    a, w = _operands(rng, M, K, N)
    at, wt = torch.from_numpy(a), torch.from_numpy(w)
    a8 = (at.to(torch.int16) - 128).to(torch.int8)  # uint8 -> int8 shift, outside the timing
    int_mm_ok = with_int_mm and M > 16 and K % 8 == 0 and N % 8 == 0
    fm_psum = {s: FaultMap.random(cfg, PE_RATE, registers=("psum",), bits=range(32), values=(0, 1), seed=s) for s in seeds}
    fm_all = {s: FaultMap.random(cfg, PE_RATE, seed=s) for s in seeds}
    calls = {}
    if int_mm_ok:
        calls["a_int_mm"] = lambda: torch._int_mm(a8, wt)
    calls["b_exact_matmul"] = lambda: exact_matmul(at, wt, 255, 128)
    calls["c_fast_fault_free"] = lambda: fast_gemm(at, wt, cfg, None)
    for s in seeds:
        calls[f"d_fast_psum[{s}]"] = (lambda f: lambda: fast_gemm(at, wt, cfg, f))(fm_psum[s])
        calls[f"e_fast_all[{s}]"] = (lambda f: lambda: fast_gemm(at, wt, cfg, f))(fm_all[s])
    _log(f"{label}: GEMM M={M} K={K} N={N} on {cfg}")
    t, cont = ctx["gate"].measure(lambda: time_round_robin(calls, repeats))

    # Untimed checks against the integer GEMM (full size) and the cycle engine (a VERIFY_ROWS slice, every map).
    ref = _exact_ref(a, w)
    checks = {"fast_fault_free_equals_gemm": bool(np.array_equal(fast_gemm(at, wt, cfg, None).numpy(), ref)),
              "exact_matmul_equals_gemm": bool(np.array_equal(exact_matmul(at, wt, 255, 128).numpy(), ref))}
    if int_mm_ok:
        y8 = torch._int_mm(a8, wt).to(torch.int64) + 128 * wt.to(torch.int64).sum(dim=0)
        checks["int_mm_unshifted_equals_gemm"] = bool(np.array_equal(y8.numpy(), ref))
    mv = min(M, VERIFY_ROWS)
    av, wv = a[:mv], w
    agree = []
    for f in [None, *fm_psum.values(), *fm_all.values()]:
        y_fast = fast_gemm(torch.from_numpy(av), torch.from_numpy(wv), cfg, f).numpy()
        y_cyc, _ = sa.simulate_gemm(av, wv, cfg, f, engine="cycle")
        agree.append(bool(np.array_equal(y_fast, y_cyc)))
    checks["fast_equals_cycle_on_slice"] = all(agree)
    ok = all(checks.values())

    def med(prefix):
        return median([v["median_s"] for k, v in t.items() if k.startswith(prefix)])

    sec = {"a": t["a_int_mm"]["median_s"] if int_mm_ok else None, "b": t["b_exact_matmul"]["median_s"],
           "c": t["c_fast_fault_free"]["median_s"], "d": med("d_fast_psum"), "e": med("e_fast_all")}
    fastest_name, sec["fastest"] = fastest_exact_gemm(sec)

    def ratio(x, y):
        return None if sec[x] is None or sec[y] is None else sec[x] / sec[y]

    return {
        "M": M, "K": K, "N": N, "array": f"{cfg.rows}x{cfg.cols}", "dataflow": cfg.dataflow.value,
        "act_dtype": "uint8", "data_seed": data_seed, "fault_seeds": list(seeds),
        "faulty_pes": {"psum": [fm_psum[s].n_faulty_pes for s in seeds], "all": [fm_all[s].n_faulty_pes for s in seeds]},
        "int_mm_applicable": int_mm_ok,
        "seconds": sec,
        "fastest_exact_gemm": fastest_name,
        "ratios": {"d/a": ratio("d", "a"), "d/b": ratio("d", "b"), "c/a": ratio("c", "a"), "c/b": ratio("c", "b"),
                   "e/b": ratio("e", "b"), "d/fastest": ratio("d", "fastest"), "c/fastest": ratio("c", "fastest")},
        "timings": t,
        "verify_rows": mv, "checks": checks, "verified": ok, "contention": cont,
    }, ok


def bench_fast(ctx, mode: str, repeats: int, seeds: list[int], seed: int) -> tuple[list[dict[str, Any]], bool]:
    cfg = ctx["ArrayConfig"](32, 32)
    out, ok = [], True
    for i, (M, K, N) in enumerate(FAST_GEMMS[mode]):
        r, good = _fast_case(ctx, M, K, N, cfg, repeats, seeds, True, seed + i, "fast engine")
        out.append(r)
        ok &= good
    return out, ok


def bench_dataflows(ctx, mode: str, repeats: int, seeds: list[int], seed: int) -> tuple[list[dict[str, Any]], bool]:
    M, K, N = DATAFLOW_GEMM[mode]
    out, ok = [], True
    for df in ("ws", "os", "is"):
        cfg = ctx["ArrayConfig"](32, 32, df)
        r, good = _fast_case(ctx, M, K, N, cfg, repeats, seeds, False, seed, "dataflows")
        out.append(r)
        ok &= good
    return out, ok


# --------------------------------------------------------------------------- report
def _pct(d: dict[str, float] | None) -> str:
    return "n/a" if not d else f"{100 * (d['other_frac'] + d['steal_frac']):.0f}%"


def _case_contentions(res: dict[str, Any]) -> list[dict[str, Any] | None]:
    return ([r["contention"] for r in res["cycle"]] + [v["contention"] for v in res["resnet18"]["variants"].values()]
            + [r["contention"] for r in res["fast"]] + [r["contention"] for r in res["dataflows"]])


def _tables(res: dict[str, Any]) -> str:
    parts = []
    m = res["machine"]
    parts.append(f"bench_engines ({res['mode']}, {res['repeats']} repeats, median)  {m['date']}\n"
                 f"{m['cpu_model']}, {m['usable_cores']} cores; torch {m['torch']} ({m['torch_threads']} threads), "
                 f"numba {m['numba']} ({m['numba_threads']} threads, {m['numba_threading_layer']}), numpy {m['numpy']}\n"
                 f"configure(): {describe_tuning(res['tuning'])}\n"
                 f"load average at start {res['load_average_start']}; waited {res['waited_for_idle_s']:.0f} s "
                 f"for other work (budget {res['wait_idle_budget_s']:.0f} s); 'busy' = CPU share other processes took "
                 "during a measurement")
    if any(c and not c["clean"] for c in _case_contentions(res)):
        parts[-1] += ("\nWARNING: other work shared the CPUs during some measurements (busy > 5%); those timings are "
                      "slowed and noisy (on a shared machine rerun with --wait-idle 600).")

    rows = [[r["engine"], r["dataflow"], r["first_call_s"], r["second_call_s"]] for r in res["jit"]["calls"]]
    cache = "fresh numba cache: compile times" if res["jit"]["fresh_cache"] else "user numba cache: may be cache loads"
    parts.append(format_table(["engine", "flow", "first call s", "second call s"], rows,
                              f"0. JIT / first call on a 70x70x70 GEMM, 32x32 array, 2% faulty PEs ({cache})"))

    rows = []
    for r in res["cycle"]:
        u, sp = r["updates_per_s"], r["speedup_vs_naive"]
        t = r["timings"]
        rows.append([f"{r['array']} ff", f"{r['M']}x{r['K']}x{r['N']}", r["cycles"], t["engine_fault_free"]["median_s"],
                     u["engine_fault_free"], u["engine_fault_free_1thread"], u["naive_fault_free"], sp["fault_free"],
                     sp["fault_free_1thread"], _pct(r["contention"])])
        rows.append([f"{r['array']} 1% ps+act", "", None, t["engine_faulty"]["median_s"], u["engine_faulty"],
                     u.get("engine_faulty_1thread"), None, sp["faulty"], None, ""])
    txt = format_table(["array", "MxKxN", "cycles", "engine s", "upd/s", "upd/s 1thr", "naive upd/s",
                        "vs naive", "vs naive 1thr", "busy"], rows,
                       "1. Cycle engine, WS, PE-register updates/s (= cycles x R x C / s); naive = single-threaded njit loop")
    for r in res["cycle"]:
        if "target_updates_per_s" in r:
            tgt = r["target_updates_per_s"]
            for k, lab in (("engine_fault_free", "fault-free"), ("engine_faulty", "1% faulty")):
                v = r["updates_per_s"][k]
                txt += (f"\n   target >= {tgt:.1e} upd/s on {r['array']} ({lab}, {r['numba_threads']} threads): "
                        f"{'met' if v >= tgt else 'MISSED'} ({v:.3g} = {100 * v / tgt:.0f}% of target)")
    parts.append(txt)

    rn = res["resnet18"]
    rows = []
    for k, v in rn["variants"].items():
        rows.append([k, v["total_s"], v["total_cycles"], v["updates_per_s"], v["verified"], _pct(v["contention"])])
    txt = format_table(["variant", "total s", "total cycles", "upd/s", "verified", "busy"], rows,
                       f"2. ResNet-18 {rn['image']}x{rn['image']} batch 1, {rn['n_gemms']} GEMMs, "
                       f"{rn['macs'] / 1e9:.3f} GMAC, 32x32 WS, cycle engine with values (median of {rn['repeats']})")
    if rn["scalesim_v2_reference_s"]:
        ff = rn["variants"]["fault_free"]["total_s"]
        txt += (f"\n   reference (stated, not measured): SCALE-Sim v2 > {rn['scalesim_v2_reference_s']:.0f} s "
                f"for this network on 32x32 -> at least {rn['scalesim_v2_reference_s'] / ff:.0f}x slower than "
                "the fault-free run above, which also computes every value")
    parts.append(txt)

    def fast_rows(items, with_flow):
        rows = []
        for r in items:
            s, q = r["seconds"], r["ratios"]
            head = [r["dataflow"]] if with_flow else []
            rows.append(head + [f"{r['M']}x{r['K']}x{r['N']}", s["a"], s["b"], s["c"], s["d"], s["e"], q["d/a"],
                                q["d/b"], q["d/fastest"], q["c/a"], q["c/b"], q["e/b"], r["verified"],
                                _pct(r["contention"])])
        return rows

    cols = ["MxKxN", "(a) int_mm s", "(b) exact s", "(c) ff s", "(d) psum s", "(e) all s", "d/a", "d/b",
            "d/min(a,b)", "c/a", "c/b", "e/b", "verified", "busy"]
    txt = format_table(cols, fast_rows(res["fast"], False),
                       f"3. Fast engine, 32x32 WS, uint8 x int8; (d)/(e): 1% faulty PEs, median over "
                       f"{len(res['fault_seeds'])} fault maps")
    for r in res["fast"]:
        q = r["ratios"]["d/fastest"]
        txt += (f"\n   target (d) <= {FAST_TARGET:g}x the fastest exact GEMM ({r['fastest_exact_gemm']}) on "
                f"{r['M']}x{r['K']}x{r['N']}: {'met' if q <= FAST_TARGET else 'MISSED'} ({q:.2f}x)")
    parts.append(txt)
    parts.append(format_table(["flow"] + cols, fast_rows(res["dataflows"], True),
                              "4. Fast engine by dataflow (informational; (a) not run)"))
    parts.append(f"verified: {res['verified']}    JSON: {res['json_path']}")
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="short smoke run: smaller GEMMs, ResNet-18 at 56x56, fewer repeats")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="output folder (default benchmarks/results)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per measurement (default 7, quick 3)")
    p.add_argument("--seeds", type=int, default=None, help="fault maps per faulty measurement (default 5, quick 2)")
    p.add_argument("--seed", type=int, default=0, help="base seed of the random operands and fault maps")
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                   help="shared machines: before each measurement wait until other processes use < 5%% of the "
                        "CPUs, and redo (up to twice) a measurement they disturbed; SECONDS caps the total "
                        "waiting of the run (default 0: never wait)")
    p.add_argument("--jit-cache", choices=("fresh", "user"), default=None,
                   help="'fresh': an empty numba cache, so section 0 times real compilation (default for the full "
                        "run); 'user': the normal cache, first calls may be cache loads (default with --quick)")
    args = p.parse_args(argv)
    mode = "quick" if args.quick else "full"
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 7)
    n_seeds = args.seeds if args.seeds is not None else (2 if args.quick else 5)
    if repeats < 1 or n_seeds < 1:
        p.error(f"--repeats and --seeds must be at least 1. Got {repeats} and {n_seeds} instead.")

    jit_cache = args.jit_cache or ("user" if args.quick else "fresh")
    cache_dir = use_fresh_numba_cache() if jit_cache == "fresh" else None
    try:
        import sysarray
        from sysarray import ArrayConfig, FaultMap

        gate = IdleGate(args.wait_idle)
        ctx = {"sysarray": sysarray, "ArrayConfig": ArrayConfig, "FaultMap": FaultMap, "gate": gate,
               "numba_cache_dir": cache_dir, "fresh_cache": cache_dir is not None}
        seeds = [args.seed + 100 + i for i in range(n_seeds)]
        t0 = time.perf_counter()
        _log(f"bench_engines {mode}: {repeats} repeats, fault seeds {seeds}")
        res: dict[str, Any] = {"benchmark": "bench_engines", "repeats": repeats, "seed": args.seed,
                               "fault_seeds": seeds, "pe_rate": PE_RATE, "jit_cache": jit_cache,
                               "wait_idle_budget_s": args.wait_idle, "load_average_start": load_average(),
                               "contention": {}}
        monitor = CpuMonitor()
        sections = [
            ("jit", lambda: (bench_jit(ctx), True)),
            ("cycle", lambda: bench_cycle(ctx, mode, repeats, args.seed)),
            ("resnet18", lambda: bench_resnet(ctx, mode, repeats, args.seed)),
            ("fast", lambda: bench_fast(ctx, mode, repeats, seeds, args.seed)),
            ("dataflows", lambda: bench_dataflows(ctx, mode, repeats, seeds, args.seed)),
        ]
        oks = {}
        for name, run in sections:
            if name == "jit":
                gate.wait()
                _log("JIT / first calls")
            mon = CpuMonitor()
            res[name], oks[name] = run()
            res["contention"][name] = mon.stop()
        res["verified"] = all(v for k, v in oks.items() if k != "jit")
        res["verified_parts"] = {k: v for k, v in oks.items() if k != "jit"}
        res["wall_s"] = time.perf_counter() - t0
        res["cpu_contention"] = monitor.stop()
        res["waited_for_idle_s"] = round(gate.waited_s, 1)
        res.update(provenance(TUNING, mode, REPO))
        path = args.out / "bench_engines.json"
        res["json_path"] = str(path)
        write_json(path, res)
    finally:
        if cache_dir is not None:
            shutil.rmtree(cache_dir, ignore_errors=True)
    print(_tables(res))
    _log(f"done in {res['wall_s']:.0f} s")
    if not res["verified"]:
        print("ERROR: a verification check failed; see 'checks' in the JSON.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
