"""Faulty-chip inference cost against float32 torch inference of the same model and batch.

Run from the repository root::

    .venv/bin/python benchmarks/bench_inference.py [--quick] [--repeats N] [--maps N] [--seed S] [--out DIR]

For LeNet-5 and ResNet-20 on 32x32 inputs, batch 256 (untrained weights: the cost does not depend
on them), it times round-robin, in one run:

- float32 torch inference of the model (``torch.no_grad``, eval mode);
- the integer program fault-free on a 32x32 WS chip (fast engine);
- the integer program on ``--maps`` chips (default 5) with 1% faulty PEs, psum faults on random
  bits (fast engine), without the extra fault-free GEMMs that count changed outputs
  (``count_changes=False``).

and reports the faulty / float ratio (target at most 2x): per chip the ratio of the medians and
the median of the per-round ratios (the calls of a round run back to back, which resists a
shared machine's drift); the table gives their medians over the chips and the worst chip (the
replay's cost depends on where the faulty PEs sit). Conv layers run on the fast engine's
im2col-free path (``sysarray.engines.fast_conv``). Writes ``OUT/bench_inference.json``.

Importing sysarray shortens the spin-wait of torch's OpenMP threads (``GOMP_SPINCOUNT``, see
``sysarray/__init__.py``) and keeps freed activation buffers in the process (glibc's malloc
thresholds, ``sysarray/_malloc.py``), which the float32 model above runs with too. So that these
choices cannot flatter the ratio by slowing the baseline, float32 inference is also timed in a
child process that loads torch with its own defaults (``float32_torch_defaults``), and the faulty
chip is compared with it as well (``faulty_over_float_torch_defaults``); the target holds only if
both ratios meet it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import sysarray  # noqa: F401  (before torch: it sets torch's OpenMP spin time)
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import format_table, machine_info, summarize_times, time_round_robin, write_json  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TARGET = 2.0

# Float32 inference timed in a child process where torch loads before sysarray, with the
# environment torch gets by default (no GOMP_SPINCOUNT).
_FLOAT_CHILD = """
import json, sys, time
import torch
from accel_models.zoo import build_model
name, shape, batch, repeats, seed = json.loads(sys.argv[1])
torch.manual_seed(seed)
model = build_model(name, tuple(shape), 10).eval()
x = torch.rand(batch, *shape)
with torch.no_grad():
    model(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t0)
print(json.dumps(times))
"""


def float_with_torch_defaults(name: str, shape, batch: int, repeats: int, seed: int) -> dict:
    """float32 inference timings (``summarize_times``) in a child process with torch's own runtime defaults."""
    # the model zoo imports sysarray (after torch here): its malloc settings are turned off too
    env = {**{k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}, "SYSARRAY_MALLOC_TUNING": "0"}
    out = subprocess.run([sys.executable, "-c", _FLOAT_CHILD, json.dumps([name, list(shape), batch, repeats, seed])],
                         env=env, cwd=REPO, capture_output=True, text=True, check=True)
    return summarize_times(json.loads(out.stdout.strip().splitlines()[-1]))


def measure(name: str, shape, batch: int, repeats: int, seed: int, n_maps: int) -> dict:
    import sysarray as sa
    from accel_models.lowering import lower
    from accel_models.zoo import build_model

    torch.manual_seed(seed)
    model = build_model(name, shape, 10).eval()
    x = torch.rand(batch, *shape)
    program = lower(model, x)
    cfg = sa.ArrayConfig(32, 32, "ws")
    # Several chips: the replay's cost depends on where the faulty PEs sit (their rows set how long
    # the partial sums are; LeNet-5 measured 1.16-1.82x float32 over ten maps in one run).
    maps = {map_seed: sa.FaultMap.random(cfg, pe_rate=0.01, registers=("psum",), seed=map_seed)
            for map_seed in range(seed, seed + n_maps)}

    def float_run():
        with torch.no_grad():
            return model(x)

    calls = {
        "float32": float_run,
        "int_fault_free": lambda: program.run(x, cfg, count_changes=False),
        **{f"int_faulty_map{s}": (lambda fm=fm: program.run(x, cfg, faults=fm, count_changes=False))
           for s, fm in maps.items()},
    }
    t = time_round_robin(calls, repeats)
    defaults = float_with_torch_defaults(name, shape, batch, repeats, seed)
    per_map = []
    for s, fm in maps.items():
        faulty = t[f"int_faulty_map{s}"]
        per_map.append({
            "map_seed": s, "faulty_pes": fm.n_faulty_pes, "int_faulty_median_s": faulty["median_s"],
            "faulty_over_float": faulty["median_s"] / t["float32"]["median_s"],
            # The calls of one round run back to back, so their ratio is less exposed to the
            # machine's drift (shared CPUs) than the ratio of medians taken over the whole run.
            "faulty_over_float_paired": float(np.median(np.array(faulty["times_s"]) / np.array(t["float32"]["times_s"]))),
            "faulty_over_float_torch_defaults": faulty["median_s"] / defaults["median_s"]})
    med = lambda key: float(np.median([m[key] for m in per_map]))  # noqa: E731
    return {"model": name, "input": list(shape), "batch": batch, "array": "32x32 ws", "maps": per_map,
            "timings": t, "int_faulty_median_s": med("int_faulty_median_s"),
            "faulty_over_float": med("faulty_over_float"),
            "faulty_over_float_worst_map": max(m["faulty_over_float"] for m in per_map),
            "faulty_over_float_paired": med("faulty_over_float_paired"),
            "float32_torch_defaults": defaults,
            "faulty_over_float_torch_defaults": med("faulty_over_float_torch_defaults"),
            "faulty_over_float_torch_defaults_worst_map": max(m["faulty_over_float_torch_defaults"] for m in per_map),
            "fault_free_over_float": t["int_fault_free"]["median_s"] / t["float32"]["median_s"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="batch 32 and 2 repeats (a smoke run)")
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--seed", type=int, default=0, help="model, data and first fault map's seed (default 0)")
    ap.add_argument("--maps", type=int, default=5, metavar="N",
                    help="faulty chips timed (fault-map seeds SEED..SEED+N-1; default 5): ratios are medians over them")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.maps < 1:
        ap.error(f"--repeats and --maps must be at least 1. Got {args.repeats} and {args.maps} instead.")
    batch = 32 if args.quick else 256
    repeats = 2 if args.quick else args.repeats
    n_maps = 2 if args.quick else args.maps
    results = [measure(n, s, batch, repeats, args.seed, n_maps) for n, s in (("lenet5", (1, 32, 32)), ("resnet20", (3, 32, 32)))]
    rows = [(r["model"], r["batch"], r["timings"]["float32"]["median_s"] * 1e3,
             r["float32_torch_defaults"]["median_s"] * 1e3,
             r["timings"]["int_fault_free"]["median_s"] * 1e3, r["int_faulty_median_s"] * 1e3,
             round(r["faulty_over_float"], 2), round(r["faulty_over_float_worst_map"], 2),
             round(r["faulty_over_float_paired"], 2), round(r["faulty_over_float_torch_defaults"], 2),
             round(r["faulty_over_float_torch_defaults_worst_map"], 2), TARGET) for r in results]
    print(format_table(["model", "batch", "float32 ms", "float32 ms (torch defaults)", "int fault-free ms",
                        "int 1% psum ms", "faulty/float", "worst chip", "per round", "faulty/float (torch defaults)",
                        "worst chip", "target"],
                       rows, title=f"Faulty-chip inference vs float32 torch (32x32 WS, fast engine; medians over "
                                   f"{n_maps} chips with 1% faulty PEs)"))
    write_json(Path(args.out) / "bench_inference.json",
               {"benchmark": "bench_inference", "results": results, "machine": machine_info(REPO)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
