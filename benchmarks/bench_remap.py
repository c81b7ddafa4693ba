"""Fault-aware mapping and exact arithmetic repairs (mitigation.remap, mitigation.arith_repair).

Run from the repository root::

    .venv/bin/python benchmarks/bench_remap.py [--quick] [--out DIR]

LeNet-5 trained on ``digits`` (seed 0, a few epochs), lowered as ``sysarray run`` does, on a
32x32 WS array with 32-bit psums. For each PE fault rate and register group (weight, psum, both),
``--chips`` seeded maps (chip ``i`` of a rate uses ``SeedSequence(seed, spawn_key=(i,))`` through
``FaultMap.random``); each chip is judged on the test split with: no mitigation, a random channel
permutation (seeded; a blind-mapping control), the magnitude, Taylor and effect mappings, the
arithmetic repair alone, and the repair-aware effect mapping followed by the repair. Saliencies
use the first 256 training images. Writes ``OUT/bench_remap.json`` (per-chip accuracies and the
mean per rate) and prints the table.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import sysarray.runtime

TUNING = sysarray.runtime.configure()  # a program: tuned first, before torch loads

import numpy as np  # noqa: E402
import torch  # noqa: E402

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import format_table, provenance, train_base_model, write_json  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
METHODS = ("none", "random", "magnitude", "taylor", "effect", "repair", "effect+repair")
GROUPS = {"weight": ("weight",), "psum": ("psum",), "weight+psum": ("weight", "psum")}


def evaluate_chip(program, cfg, faults, images, labels, cal_x, cal_y, seed: int) -> dict[str, float]:
    from mitigation.arith_repair import repair_program
    from mitigation.remap import permute_op, remap_program

    acc = lambda p: p.run(images, cfg, faults, count_changes=False).accuracy(labels)  # noqa: E731
    out = {"none": acc(program)}
    rng = np.random.default_rng(seed)
    ops = [permute_op(op, rng.permutation(op.out_channels)) if hasattr(op, "out_order") else op for op in program.ops]
    out["random"] = acc(type(program)(**{**program.__dict__, "ops": ops}))
    for sal in ("magnitude", "taylor", "effect"):
        out[sal] = acc(remap_program(program, cfg, faults, sal, cal_x, cal_y)[0])
    repaired, reports = repair_program(program, cfg, faults)
    out["repair"] = acc(repaired)
    both = repair_program(remap_program(program, cfg, faults, "effect", cal_x, cal_y, repair=True)[0], cfg, faults)[0]
    out["effect+repair"] = acc(both)
    out["neutralised"] = sum(r.weight_neutralised + r.psum_neutralised for r in reports)
    out["left"] = sum(r.weight_left + r.psum_left + r.act_left for r in reports)
    out["reround_rel"] = float(np.mean([r.reround_rel for r in reports]))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one chip per rate, two rates")
    ap.add_argument("--chips", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args(argv)
    from accel_models.data import load_dataset
    from accel_models.evaluation import prepare
    from sysarray import ArrayConfig, FaultMap

    rates = [0.02, 0.1] if args.quick else [0.02, 0.05, 0.1]
    chips = 1 if args.quick else args.chips
    cfg = ArrayConfig(32, 32, "ws")
    data = load_dataset("digits")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt, train_s = train_base_model("lenet5", "digits", args.epochs, Path(tmp) / "lenet5.pt")
        task = prepare(ckpt)
    program, images, labels = task.program, task.images, task.labels
    cal_x, cal_y = data.train_x[:256], data.train_y[:256]
    clean = program.run(images, cfg, count_changes=False).accuracy(labels)
    rows, results = [], []
    t0 = time.perf_counter()
    for group, regs in GROUPS.items():
        for rate in rates:
            per_chip = []
            for i in range(chips):
                seed = np.random.SeedSequence(args.seed, spawn_key=(i,))
                fm = FaultMap.random(cfg, rate, seed=seed, registers=regs)
                res = evaluate_chip(program, cfg, fm, images, labels, cal_x, cal_y, seed=args.seed + i)
                res.update(group=group, rate=rate, chip=i, faulty_pes=fm.n_faulty_pes)
                per_chip.append(res)
            results += per_chip
            rows.append([group, rate] + [float(np.mean([r[m] for r in per_chip])) for m in METHODS]
                        + [float(np.mean([r["neutralised"] for r in per_chip])), float(np.mean([r["left"] for r in per_chip]))])
    seconds = time.perf_counter() - t0
    headers = ["registers", "PE rate"] + list(METHODS) + ["neutralised", "left"]
    print(f"LeNet-5 on digits, 32x32 WS, 32-bit psums; fault-free accuracy {clean:.4f}; "
          f"{chips} chip(s) per rate; mean test accuracy")
    print(format_table(headers, rows))
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "bench_remap.json", {
        "benchmark": "bench_remap", "model": "lenet5", "dataset": "digits", "base_epochs": args.epochs,
        "base_train_s": train_s, "array": cfg.to_dict(), "clean_accuracy": clean, "rates": rates,
        "chips_per_rate": chips, "methods": list(METHODS), "table": {"headers": headers, "rows": rows},
        "chips": results, "seconds": seconds, "provenance": provenance(TUNING, "quick" if args.quick else "full", REPO)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
