"""Fault-aware training cost: eFAT against per-chip and conventional FAT, and the cost of one FAT epoch.

Run from the repository root::

    .venv/bin/python benchmarks/bench_fat.py [--quick] [--chips N] [--out DIR]

For LeNet-5 on ``digits`` (and on Fashion-MNIST when it is present at
/usr/share/datasets/fashion-mnist; skipped with a message otherwise) on a 16x16 WS array, in one run:

- trains the base model (seeded), then for a population of ``--chips`` chips (default 50) whose PE
  fault rates are drawn uniformly in [0.5%, 20%], once with uniformly placed faulty PEs and once
  with clustered ones (3 blobs), runs eFAT in bypass mode (FAP+T; the resilience map drawn with the
  population's placement) and writes
  the cost report: retraining epochs and seconds of conventional FAT (every chip the largest grid
  amount; not run), per-chip amounts (Reduce, run: validated and repaired like eFAT's groups) and
  eFAT groups (planned, and with the repairs validation asked for), the resilience map's own cost,
  each flow's total with the map, the break-even chip counts, rejected chips and violations on the
  test split (amounts and repairs are chosen on 20% of the training images held out). Rate grid
  0..0.25 in steps of 0.025; digits: amounts 0,1,2,4,8 epochs, 3 maps per rate; Fashion-MNIST:
  0,1,2,4, 2 maps;
- times, round-robin, one epoch of plain float32 training, of FAP+T and of stuck-at FAT (twin
  forward through the exact fast engine, 2% faulty PEs with psum stuck bits) on the same data, and
  reports each over the float32 epoch; the same for ResNet-20 (untrained, seeded) on
  ``--resnet-images`` random 3x32x32 images.

The base model is trained on the training part of eFAT's split, so the validation images are new
to it too. Fashion-MNIST retrains on the first ``--fashion-train`` training images and judges on
the first ``--fashion-test`` test images (the full sets would make the run many times longer);
``--digits-only`` skips it. Writes
``OUT/bench_fat.json`` and ``OUT/bench_fat.md`` (``bench_fat-TAG.*`` with ``--tag TAG``).
"""
from __future__ import annotations

import argparse
import copy
import os
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

from benchmarks._common import format_table, provenance, time_round_robin, train_base_model, write_json  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FASHION_DIR = "/usr/share/datasets/fashion-mnist"
RATES = [round(0.025 * i, 3) for i in range(11)]  # 0 .. 0.25: the chips' rates are at most 0.2


def base_model(dataset: str, epochs: int, folder: Path, train_limit: int | None, seed: int = 0) -> tuple[str, float]:
    """Train LeNet-5 (seed 0) on the training part of eFAT's split (its validation images held out
    from the base model too) and save it; returns (path, seconds)."""
    from accel_models.data import load_dataset
    from mitigation.efat import EfatSettings, split_indices

    n = train_limit or len(load_dataset(dataset).train_x)
    keep = torch.from_numpy(split_indices(n, EfatSettings.val_fraction, seed)[0])
    return train_base_model("lenet5", dataset, epochs, folder / f"lenet5-{dataset}.pt", keep)


def write_population(folder: Path, n: int, kind: str, seed: int) -> list[float]:
    """``n`` chips with PE rates uniform in [0.005, 0.2], faults in any register; returns the rates."""
    from sysarray import ArrayConfig
    from sysarray.faultgen import by_pe_rate, chip_seeds, clustered

    cfg = ArrayConfig(16, 16, "ws")
    folder.mkdir(parents=True, exist_ok=True)
    rates = np.random.default_rng(seed).uniform(0.005, 0.2, n)
    for i, (rate, s) in enumerate(zip(rates, chip_seeds(seed, n))):
        gen = by_pe_rate if kind == "uniform" else clustered
        gen(cfg, float(rate), seed=s).save(folder / f"chip-{i:03d}.npz")
    return [float(r) for r in rates]


def efat_cost(ckpt: str, chips: Path, out: Path, args, limit, train_limit, amounts, maps, kind) -> dict:
    from mitigation.efat import EfatSettings, run_efat
    from sysarray import ArrayConfig

    settings = EfatSettings(max_drop=args.max_drop, bypass=True, rates=RATES, amounts=amounts, maps_per_rate=maps,
                            map_faults=kind, limit=limit, train_limit=train_limit, seed=args.seed)
    t0 = time.perf_counter()
    res = run_efat(ckpt, str(chips), ArrayConfig(16, 16, "ws"), settings, str(out), progress=not args.no_progress)
    cost = {k: v for k, v in res.cost.items() if k not in ("per_chip", "accuracy")}
    cost["reduce"] = {k: v for k, v in cost["reduce"].items() if k != "chips"}
    cost["wall_s"] = time.perf_counter() - t0
    cost["table"] = res.table()
    return cost


def epoch_ratio(ckpt: str, repeats: int, train_limit: int | None) -> dict:
    """:func:`epoch_costs` of the checkpoint's model on its first ``train_limit`` training images."""
    from accel_models.evaluation import prepare

    task = prepare(ckpt)
    n = train_limit or len(task.dataset.train_x)
    return epoch_costs(task.model, task.program, task.dataset.train_x[:n], task.dataset.train_y[:n], repeats)


def epoch_costs(model, program, x, y, repeats: int) -> dict:
    """Median seconds of one epoch over images ``x`` and labels ``y`` (batch 64): float32
    training, FAP+T and stuck-at FAT (16x16 WS, 2% faulty PEs with psum stuck bits), and their
    ratios."""
    from accel_models.train import train
    from mitigation.fat import fap_t, stuckat_fat
    from sysarray import ArrayConfig, FaultMap

    cfg = ArrayConfig(16, 16, "ws")
    fm = FaultMap.random(cfg, pe_rate=0.02, registers=("psum",), seed=1)
    calls = {
        "float32": lambda: train(copy.deepcopy(model), x, y, epochs=1, seed=0, progress=False),
        "fapt": lambda: fap_t(model, program, cfg, fm, x, y, 1),
        "stuckat": lambda: stuckat_fat(model, program, cfg, fm, x, y, 1),
    }
    t = time_round_robin(calls, repeats)
    base = t["float32"]["median_s"]
    return {"images": len(x), "timings": t, "fapt_over_float": t["fapt"]["median_s"] / base,
            "stuckat_over_float": t["stuckat"]["median_s"] / base, "faulty_pes": fm.n_faulty_pes}


def resnet20_epoch(images: int, repeats: int, seed: int) -> dict:
    """:func:`epoch_costs` of ResNet-20 (untrained, seeded; the cost does not depend on the
    weights) on ``images`` random 3x32x32 images with random labels (CIFAR-10 is not needed),
    lowered on 256 other random images."""
    from accel_models.lowering import lower
    from accel_models.zoo import build_model

    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model("resnet20", (3, 32, 32), 10).eval()
    program = lower(model, torch.rand(256, 3, 32, 32, generator=gen))
    x, y = torch.rand(images, 3, 32, 32, generator=gen), torch.randint(0, 10, (images,), generator=gen)
    return {"model": "resnet20", **epoch_costs(model, program, x, y, repeats)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="20 chips, 2 maps per rate, amounts 0,1,2,4")
    ap.add_argument("--digits-only", action="store_true", help="skip Fashion-MNIST")
    ap.add_argument("--tag", default="", help="name the outputs bench_fat-TAG.json / .md (default: bench_fat.json / .md)")
    ap.add_argument("--chips", type=int, default=50, help="chips per population (default 50)")
    ap.add_argument("--max-drop", type=float, default=0.03, help="accuracy drop allowed (default 0.03)")
    ap.add_argument("--repeats", type=int, default=None, help="timed epochs per method (default 3; 1 with --quick)")
    ap.add_argument("--fashion-train", type=int, default=3000, help="Fashion-MNIST training images used (default 3000)")
    ap.add_argument("--fashion-test", type=int, default=2000, help="Fashion-MNIST test images judged (default 2000)")
    ap.add_argument("--resnet-images", type=int, default=640,
                    help="random images of the ResNet-20 epochs (default 640; 0 skips them)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch's and numba's threads, the same for the float baseline and the chip's kernels "
                         "(default 1: the machine is shared)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    sysarray.runtime.set_threads(args.threads)
    n_chips = 20 if args.quick else args.chips
    repeats = args.repeats if args.repeats is not None else 1 if args.quick else 3
    # (name, base epochs, train images, test images, amount grid, maps per rate)
    datasets = [("digits", 40, None, None, [0, 1, 2, 4] if args.quick else [0, 1, 2, 4, 8], 2 if args.quick else 3)]
    if args.digits_only:
        pass
    elif os.path.isdir(FASHION_DIR):
        datasets.append(("fashion-mnist", 5, args.fashion_train, args.fashion_test, [0, 1, 2, 4], 2))
    else:
        print(f"Fashion-MNIST not found at {FASHION_DIR}: skipped (install Debian's dataset-fashion-mnist).")
    results, rows, ratio_rows = [], [], []
    with tempfile.TemporaryDirectory(prefix="bench_fat-") as tmp:
        tmp = Path(tmp)
        for name, epochs, train_limit, limit, amounts, maps in datasets:
            ckpt, train_s = base_model(name, epochs, tmp, train_limit, args.seed)
            entry = {"dataset": name, "base_epochs": epochs, "base_train_s": train_s, "train_limit": train_limit,
                     "test_limit": limit, "amounts": amounts, "maps_per_rate": maps, "rates": RATES,
                     "populations": {}}
            for kind in ("uniform", "clustered"):
                chips = tmp / f"{name}-{kind}"
                rates = write_population(chips, n_chips, kind, args.seed)
                cost = efat_cost(ckpt, chips, tmp / f"{name}-{kind}-out", args, limit, train_limit, amounts, maps, kind)
                cost["chip_rates"] = rates
                entry["populations"][kind] = cost
                print(cost["table"].split("\n\n")[0] + "\n" + cost["table"].split("\n\n")[1] + "\n")
                red, be = cost["reduce"], cost["break_even"]
                rows.append((name, kind, n_chips, cost["chips_accepted"], cost["conventional_epochs"],
                             f"{red['epochs']:g} ({red['repair_epochs']:g})", f"{cost['efat_epochs']:g} "
                             f"({cost['repair_epochs']:g})", cost["groups"], cost["map_epochs"],
                             cost["per_chip_total_epochs"], cost["efat_total_epochs"],
                             "never" if be["efat_vs_conventional"] is None else be["efat_vs_conventional"],
                             "never" if be["efat_vs_reduce"] is None else be["efat_vs_reduce"],
                             f"{len(red['violations'])} / {len(cost['violations'])}",
                             f"{len(red['rejected'])} / {len(cost['rejected'])}"))
            entry["epoch_cost"] = epoch_ratio(ckpt, repeats, train_limit)
            ec = entry["epoch_cost"]
            ratio_rows.append((name, ec["images"], ec["timings"]["float32"]["median_s"],
                               ec["timings"]["fapt"]["median_s"], ec["timings"]["stuckat"]["median_s"],
                               round(ec["fapt_over_float"], 2), round(ec["stuckat_over_float"], 2)))
            results.append(entry)
    resnet = resnet20_epoch(args.resnet_images, repeats, args.seed) if args.resnet_images > 0 else None
    if resnet is not None:
        ratio_rows.append(("ResNet-20, random images", resnet["images"], resnet["timings"]["float32"]["median_s"],
                           resnet["timings"]["fapt"]["median_s"], resnet["timings"]["stuckat"]["median_s"],
                           round(resnet["fapt_over_float"], 2), round(resnet["stuckat_over_float"], 2)))
    t1 = format_table(["dataset", "faults", "chips", "accepted", "conventional ep", "Reduce ep (repairs)",
                       "eFAT ep (repairs)", "groups", "map ep", "Reduce + map", "eFAT + map", "eFAT = conv. from N",
                       "eFAT = Reduce from N", "test violations Reduce / eFAT", "rejected Reduce / eFAT"], rows,
                      title=f"eFAT retraining cost, LeNet-5, 16x16 WS bypass, accuracy drop <= {args.max_drop} "
                            f"(chosen on the validation split, violations on the test split)")
    t2 = format_table(["dataset", "images", "float32 epoch s", "FAP+T epoch s", "stuck-at FAT epoch s", "FAP+T/float",
                       "stuck-at/float"], ratio_rows, title="One training epoch (median of round-robin repeats)")
    print(t1 + "\n\n" + t2)
    out = Path(args.out)
    stem = f"bench_fat-{args.tag}" if args.tag else "bench_fat"
    write_json(out / f"{stem}.json", {"benchmark": "bench_fat", "chips": n_chips, "max_drop": args.max_drop,
                                        "threads": args.threads, "results": results, "resnet20_epoch_cost": resnet,
                                        **provenance(TUNING, "quick" if args.quick else "full", REPO)})
    (out / f"{stem}.md").write_text(t1 + "\n\n" + t2 + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
