"""Faulty-chip inference cost against float32 torch inference of the same model and batch.

Run from the repository root::

    .venv/bin/python benchmarks/bench_inference.py [--quick] [--repeats N] [--out DIR]

For LeNet-5 and ResNet-20 on 32x32 inputs, batch 256 (untrained weights: the cost does not depend
on them), it times round-robin, in one run:

- float32 torch inference of the model (``torch.no_grad``, eval mode);
- the integer program fault-free on a 32x32 WS chip (fast engine);
- the integer program on a chip with 1% faulty PEs, psum faults on random bits (fast engine),
  without the extra fault-free GEMMs that count changed outputs (``count_changes=False``).

and reports the faulty / float ratio (target at most 2x): the ratio of the medians, and the median
of the per-round ratios (the calls of a round run back to back, which resists a shared machine's
drift). Conv layers run on the fast engine's
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


def measure(name: str, shape, batch: int, repeats: int, seed: int) -> dict:
    import sysarray as sa
    from accel_models.lowering import lower
    from accel_models.zoo import build_model

    torch.manual_seed(seed)
    model = build_model(name, shape, 10).eval()
    x = torch.rand(batch, *shape)
    program = lower(model, x)
    cfg = sa.ArrayConfig(32, 32, "ws")
    fm = sa.FaultMap.random(cfg, pe_rate=0.01, registers=("psum",), seed=seed)

    def float_run():
        with torch.no_grad():
            return model(x)

    calls = {
        "float32": float_run,
        "int_fault_free": lambda: program.run(x, cfg, count_changes=False),
        "int_faulty": lambda: program.run(x, cfg, faults=fm, count_changes=False),
    }
    t = time_round_robin(calls, repeats)
    ratio = t["int_faulty"]["median_s"] / t["float32"]["median_s"]
    # The calls of one round run back to back, so their ratio is less exposed to the machine's
    # drift (shared CPUs) than the ratio of medians taken over the whole run.
    paired = float(np.median(np.array(t["int_faulty"]["times_s"]) / np.array(t["float32"]["times_s"])))
    defaults = float_with_torch_defaults(name, shape, batch, repeats, seed)
    return {"model": name, "input": list(shape), "batch": batch, "array": "32x32 ws", "faulty_pes": fm.n_faulty_pes,
            "timings": t, "faulty_over_float": ratio, "faulty_over_float_paired": paired,
            "float32_torch_defaults": defaults,
            "faulty_over_float_torch_defaults": t["int_faulty"]["median_s"] / defaults["median_s"],
            "fault_free_over_float": t["int_fault_free"]["median_s"] / t["float32"]["median_s"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="batch 32 and 2 repeats (a smoke run)")
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    batch = 32 if args.quick else 256
    repeats = 2 if args.quick else args.repeats
    results = [measure(n, s, batch, repeats, args.seed) for n, s in (("lenet5", (1, 32, 32)), ("resnet20", (3, 32, 32)))]
    rows = [(r["model"], r["batch"], r["timings"]["float32"]["median_s"] * 1e3,
             r["float32_torch_defaults"]["median_s"] * 1e3,
             r["timings"]["int_fault_free"]["median_s"] * 1e3, r["timings"]["int_faulty"]["median_s"] * 1e3,
             round(r["faulty_over_float"], 2), round(r["faulty_over_float_paired"], 2),
             round(r["faulty_over_float_torch_defaults"], 2), TARGET) for r in results]
    print(format_table(["model", "batch", "float32 ms", "float32 ms (torch defaults)", "int fault-free ms",
                        "int 1% psum ms", "faulty/float", "per round", "faulty/float (torch defaults)", "target"],
                       rows, title="Faulty-chip inference vs float32 torch (32x32 WS, fast engine)"))
    write_json(Path(args.out) / "bench_inference.json",
               {"benchmark": "bench_inference", "results": results, "machine": machine_info(REPO)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
