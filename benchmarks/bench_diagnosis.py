"""Fault diagnosis from GEMM outputs: localization rate per register and dataflow on random
multi-fault chips, false alarms, and the test cost.

Run from the repository root::

    .venv/bin/python benchmarks/bench_diagnosis.py [--quick] [--chips N] [--array RxC] [--out DIR]

For each dataflow (WS, OS, IS) ``--chips`` chips of a ``--array`` array (default 32x32, 32-bit
psums) get 1 to ``--max-faults`` (default 10) faulty PEs, one stuck bit each, register uniform
over weight/act/psum, bit uniform over the register, value 0 or 1 (``faultgen.by_pe_rate``, chip
``i`` seeded ``SeedSequence(seed).spawn(chips)[i]``, its fault count from the same stream).
:func:`sysarray.diagnosis.diagnose` sees each chip only through ``Chip.gemm``. Reported per
register and dataflow: localization rate = located exactly / detectable (located + missed +
aliased), false alarms, aliased, undetectable; the test cost in GEMMs and cycles, as a share of
one inference tile (one fold streaming 3136 elements) and of one full square GEMM tile
(M = K = N = array side). Writes ``OUT/bench_diagnosis.json``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import sysarray.runtime

TUNING = sysarray.runtime.configure()  # a program: tuned first, before torch loads

import numpy as np  # noqa: E402

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import format_table, provenance, write_json  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
KEYS = ("located", "missed", "aliased", "undetectable", "false_alarms")


def run_flow(flow: str, rows: int, cols: int, psum_bits: int, chips: int, max_faults: int, seed: int) -> dict:
    """Diagnose ``chips`` random chips of one dataflow; totals per register and cost statistics."""
    import sysarray as sa
    from sysarray import faultgen
    from sysarray.diagnosis import diagnose
    from sysarray.timing import gemm_timing

    cfg = sa.ArrayConfig(rows, cols, flow, psum_bits=psum_bits)
    totals = {reg: dict.fromkeys(KEYS, 0) for reg in ("weight", "act", "psum", "all")}
    cycles, tests, refinements, seconds, unconfirmed = [], [], [], [], 0
    share = []
    for i, ss in enumerate(np.random.SeedSequence(seed).spawn(chips)):
        rng = np.random.default_rng(ss)
        n = int(rng.integers(1, max_faults + 1))
        hidden = faultgen.by_pe_rate(cfg, n / (rows * cols), seed=rng, registers=("weight", "act", "psum"))
        t0 = time.perf_counter()
        d = diagnose(sa.Chip(cfg, hidden), cfg, seed=seed + i)
        seconds.append(time.perf_counter() - t0)
        for reg, score in d.score(hidden).items():
            for k in KEYS:
                totals[reg][k] += getattr(score, k)
        cycles.append(d.cycles)
        tests.append(d.tests)
        refinements.append(d.refinement_tests)
        share.append(d.tile_share)
        unconfirmed += not d.confirmed
    square = gemm_timing(rows, rows, cols, cfg).cycles  # one full R x C output tile, K = R
    out = {"dataflow": flow, "chips": chips, "registers": {}, "unconfirmed_chips": unconfirmed,
           "cycles_mean": float(np.mean(cycles)), "cycles_max": int(np.max(cycles)),
           "tests_mean": float(np.mean(tests)), "refinement_tests_mean": float(np.mean(refinements)),
           "tile_share_mean": float(np.mean(share)), "square_tile_cycles": int(square),
           "square_tile_share_mean": float(np.mean(cycles) / square),
           "seconds_per_chip_median": float(np.median(seconds))}
    for reg, k in totals.items():
        detectable = k["located"] + k["missed"] + k["aliased"]
        out["registers"][reg] = {**k, "detectable": detectable,
                                 "localization_rate": k["located"] / detectable if detectable else None}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="8 chips per dataflow")
    ap.add_argument("--chips", type=int, default=50, help="chips per dataflow (default 50)")
    ap.add_argument("--array", default="32x32", help="array RxC (default 32x32)")
    ap.add_argument("--psum-bits", type=int, default=32)
    ap.add_argument("--max-faults", type=int, default=10, help="faulty PEs per chip: 1..N (default 10)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    if args.quick:
        args.chips = 8
    # the machine is shared; diagnosis is many small GEMMs
    sysarray.runtime.set_threads(1, numba_threads=sysarray.runtime.usable_cores())
    rows, cols = (int(x) for x in args.array.lower().split("x"))
    results, table_rows = {}, []
    for flow in ("ws", "os", "is"):
        res = run_flow(flow, rows, cols, args.psum_bits, args.chips, args.max_faults, args.seed)
        results[flow] = res
        for reg in ("weight", "act", "psum", "all"):
            r = res["registers"][reg]
            table_rows.append((flow, reg, r["detectable"], r["located"], r["localization_rate"], r["missed"],
                               r["aliased"], r["undetectable"], r["false_alarms"]))
        print(f"{flow}: {res['registers']['all']} {res['cycles_mean']:.0f} cycles, "
              f"{res['seconds_per_chip_median']:.2f} s/chip", flush=True)
    table = format_table(["flow", "register", "detectable", "located", "rate", "missed", "aliased", "undetectable",
                          "false alarms"], table_rows,
                         title=f"{args.chips} chips per dataflow, {args.array}, {args.psum_bits}-bit psum, "
                               f"1-{args.max_faults} faulty PEs")
    cost = format_table(["flow", "tests", "adaptive", "cycles", "share of 3136-stream tile", "share of square tile",
                         "s/chip"],
                        [(f, r["tests_mean"], r["refinement_tests_mean"], r["cycles_mean"], r["tile_share_mean"],
                          r["square_tile_share_mean"], r["seconds_per_chip_median"]) for f, r in results.items()],
                        title="test cost (means over chips)")
    print(table)
    print(cost)
    write_json(Path(args.out) / "bench_diagnosis.json", {
        "benchmark": "bench_diagnosis", "array": args.array, "psum_bits": args.psum_bits, "chips": args.chips,
        "max_faults": args.max_faults, "seed": args.seed, "dataflows": results, "table": table, "cost_table": cost,
        **provenance(TUNING, "quick" if args.quick else "full", REPO)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
