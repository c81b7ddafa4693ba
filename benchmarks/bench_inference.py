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

and reports the faulty / float ratio (target at most 1.2x): per chip the ratio of the medians and
the median of the per-round ratios (the calls of a round run back to back, which resists a
shared machine's drift); the table gives their medians over the chips and the worst chip (the
replay's cost depends on where the faulty PEs sit). Conv layers run on the fast engine's
im2col-free path (``sysarray.engines.conv``). Writes ``OUT/bench_inference.json``.

The benchmark tunes its process with :func:`sysarray.runtime.configure` (numba's threading layer
and the spin-wait of torch's OpenMP threads measured fastest on this machine, else the libraries'
defaults; glibc malloc thresholds that keep freed activation buffers), and the float32 model above
runs with that tuning too. So that it cannot flatter the ratio by slowing the baseline, float32
inference is also timed in a child process that does not call ``configure`` and gets the
environment this process had before it (``float32_torch_defaults``), and the faulty chip is
compared with it as well (``faulty_over_float_torch_defaults``); the target holds only if both
ratios meet it.

What the tuning is worth: the same faulty chips are timed in two child processes that differ only
in whether they call ``configure`` first (same protocol in both: every chip after a warm-up run,
round-robin over the chips); ``untuned_over_tuned`` is the median over the chips of the ratio
(above 1: the tuning helps on this machine; docs/design.md, "Process tuning").
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import sysarray.runtime

_UNTUNED_ENV = dict(os.environ)  # the baseline child's environment: configure() adds variables to this one
TUNING = sysarray.runtime.configure()  # a program: tuned first, before torch loads

import numpy as np  # noqa: E402
import torch  # noqa: E402

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import float_and_chip_calls, format_table, provenance, summarize_times, time_round_robin, write_json  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TARGET = 1.2

# Float32 inference under torch's own runtime defaults: this child never calls configure().
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


# The faulty chips of measure() in a child process, tuned or not (argument 6): the same model,
# images and maps (same seeds), every chip run untimed until its kernel choices are final, then
# round-robin over the chips.
_FAULTY_CHILD = """
import json, sys, time
if json.loads(sys.argv[1])[6]:
    import sysarray.runtime
    sysarray.runtime.configure()
import torch
import sysarray as sa
from accel_models.lowering import lower
from accel_models.zoo import build_model
from benchmarks._common import settle
name, shape, batch, repeats, seed, map_seeds, _ = json.loads(sys.argv[1])
torch.manual_seed(seed)
model = build_model(name, tuple(shape), 10).eval()
x = torch.rand(batch, *shape)
program = lower(model, x)
cfg = sa.ArrayConfig(32, 32, "ws")
maps = [sa.FaultMap.random(cfg, pe_rate=0.01, registers=("psum",), seed=s) for s in map_seeds]
runs = [lambda fm=fm: program.run(x, cfg, faults=fm, count_changes=False) for fm in maps]
for run in runs:
    run()
settle(runs)
out = [[] for _ in maps]
for _ in range(repeats):
    for times, fm in zip(out, maps):
        t0 = time.perf_counter()
        program.run(x, cfg, faults=fm, count_changes=False)
        times.append(time.perf_counter() - t0)
print(json.dumps(out))
"""


def _untuned_child(code: str, args: list) -> object:
    """What ``code`` prints (JSON, last line), run in a child process with the environment this
    process had before configure() (the child calls it itself or not)."""
    out = subprocess.run([sys.executable, "-c", code, json.dumps(args)], env=_UNTUNED_ENV, cwd=REPO,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def float_with_torch_defaults(name: str, shape, batch: int, repeats: int, seed: int) -> dict:
    """float32 inference timings (``summarize_times``, seconds) in a child process with torch's own runtime defaults."""
    return summarize_times(_untuned_child(_FLOAT_CHILD, [name, list(shape), batch, repeats, seed]))


def faulty_in_child(name: str, shape, batch: int, repeats: int, seed: int, map_seeds: list[int],
                    tuned: bool) -> list[dict]:
    """Per map seed, the faulty chip's timings (``summarize_times``, seconds) in a child process that
    calls configure() first (``tuned``) or not."""
    return [summarize_times(t) for t in _untuned_child(_FAULTY_CHILD, [name, list(shape), batch, repeats, seed,
                                                                       map_seeds, tuned])]


def measure(name: str, shape, batch: int, repeats: int, seed: int, n_maps: int) -> dict:
    import sysarray as sa
    from accel_models.lowering import lower
    from accel_models.zoo import build_model

    torch.manual_seed(seed)
    model = build_model(name, shape, 10).eval()
    x = torch.rand(batch, *shape)
    program = lower(model, x)
    cfg = sa.ArrayConfig(32, 32, "ws")
    maps, calls = float_and_chip_calls(model, x, program, cfg, seed, n_maps)
    t = time_round_robin(calls, repeats)
    defaults = float_with_torch_defaults(name, shape, batch, repeats, seed)
    untuned = dict(zip(maps, faulty_in_child(name, shape, batch, repeats, seed, list(maps), tuned=False)))
    tuned = dict(zip(maps, faulty_in_child(name, shape, batch, repeats, seed, list(maps), tuned=True)))
    per_map = []
    for s, fm in maps.items():
        faulty = t[f"int_faulty_map{s}"]
        per_map.append({
            "map_seed": s, "faulty_pes": fm.n_faulty_pes, "int_faulty_median_s": faulty["median_s"],
            "faulty_over_float": faulty["median_s"] / t["float32"]["median_s"],
            # A round's calls run back to back, so their ratio resists a shared machine's drift.
            "faulty_over_float_paired": float(np.median(np.array(faulty["times_s"]) / np.array(t["float32"]["times_s"]))),
            "faulty_over_float_torch_defaults": faulty["median_s"] / defaults["median_s"],
            "child_untuned": untuned[s], "child_tuned": tuned[s],
            "untuned_over_tuned": untuned[s]["median_s"] / tuned[s]["median_s"]})
    med = lambda key: float(np.median([m[key] for m in per_map]))  # noqa: E731
    return {"model": name, "input": list(shape), "batch": batch, "array": "32x32 ws", "maps": per_map,
            "timings": t, "int_faulty_median_s": med("int_faulty_median_s"),
            "faulty_over_float": med("faulty_over_float"),
            "faulty_over_float_worst_map": max(m["faulty_over_float"] for m in per_map),
            "faulty_over_float_paired": med("faulty_over_float_paired"),
            "float32_torch_defaults": defaults,
            "faulty_over_float_torch_defaults": med("faulty_over_float_torch_defaults"),
            "faulty_over_float_torch_defaults_worst_map": max(m["faulty_over_float_torch_defaults"] for m in per_map),
            "untuned_over_tuned": med("untuned_over_tuned"),
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
             round(r["faulty_over_float_torch_defaults_worst_map"], 2), round(r["untuned_over_tuned"], 2), TARGET)
            for r in results]
    print(format_table(["model", "batch", "float32 ms", "float32 ms (torch defaults)", "int fault-free ms",
                        "int 1% psum ms", "faulty/float", "worst chip", "per round", "faulty/float (torch defaults)",
                        "worst chip", "untuned/tuned", "target"],
                       rows, title=f"Faulty-chip inference vs float32 torch (32x32 WS, fast engine; medians over "
                                   f"{n_maps} chips with 1% faulty PEs)"))
    write_json(Path(args.out) / "bench_inference.json",
               {"benchmark": "bench_inference", "results": results, "target": TARGET,
                **provenance(TUNING, "quick" if args.quick else "full", REPO)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
