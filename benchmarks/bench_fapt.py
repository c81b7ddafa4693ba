"""FAP and FAP+T at high PE fault rates, and the few-faults collapse of an unprotected 256x256 array.

Run from the repository root::

    .venv/bin/python benchmarks/bench_fapt.py [--quick] [--out DIR]

Two parts, each seeded:

1. FAP / FAP+T at 10, 25 and 50% faulty PEs (uniform, exact count; ``--maps`` maps per rate), WS
   bypass chips, for LeNet-5 on ``digits`` (16x16 array) and for an MLP 784-256-256-256-10 on
   Fashion-MNIST (256x256 array: its hidden layers are 256x256 weight tiles, so every PE holds a
   weight). FAP+T's retraining budget: ``--fapt-epochs``; ``base`` (the default) retrains for as
   many epochs as the base model was trained, the other budgets listed run too.
2. The few-faults collapse (Zhang et al. report accuracy lost with about 4 faulty MACs of 65,536):
   the MLP on the 256x256 array *without* mitigation, 0..64 faulty PEs (``--maps`` maps each), with
   (a) one stuck bit among psum bits 24-31 and (b) one stuck bit in any register (weight, act,
   psum; any bit).

Fashion-MNIST is read from /usr/share/datasets/fashion-mnist (part skipped with a message when it
is missing); the MLP trains on the first ``--train`` training images and is judged on the first
``--test`` test images. Writes ``OUT/bench_fapt.json`` and ``OUT/bench_fapt.md``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import sysarray.runtime

TUNING = sysarray.runtime.configure()  # a program: tuned first, before torch loads

import numpy as np  # noqa: E402

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import format_table, provenance, train_base_model, write_json  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FASHION_DIR = "/usr/share/datasets/fashion-mnist"
RATES = (0.10, 0.25, 0.50)
COUNTS = (0, 1, 2, 4, 8, 16, 64)


def base_model(name: str, dataset: str, epochs: int, folder: Path, train_limit: int | None, **model_kw):
    """Train a zoo model (seed 0) and save it as a checkpoint; returns (path, train seconds)."""
    select = slice(None, train_limit) if train_limit else None
    return train_base_model(name, dataset, epochs, folder / f"{name}-{dataset}.pt", select, **model_kw)


def fapt_rates(ckpt: str, size: int, base_epochs: int, budgets: list[int], maps: int, train_limit, test_limit,
               seed: int) -> dict:
    """FAP and FAP+T (each budget) on ``maps`` chips per rate of :data:`RATES`; accuracies on the bypass chip."""
    from accel_models.evaluation import prepare
    from mitigation.fat import chip_accuracy, fap_t, lower_like, prune_program
    from sysarray import ArrayConfig, FaultMap

    task = prepare(ckpt, limit=test_limit)
    cfg = ArrayConfig(size, size, "ws")
    bypass = cfg.replace(bypass=True)
    n = train_limit or len(task.dataset.train_x)
    x, y = task.dataset.train_x[:n], task.dataset.train_y[:n]
    clean = chip_accuracy(task.program, task, cfg, None)
    rows = []
    for rate in RATES:
        for s in range(maps):
            fm = FaultMap.random(cfg, pe_rate=rate, seed=np.random.SeedSequence([seed, int(rate * 1000), s]))
            pruned = chip_accuracy(prune_program(task.program, cfg, fm), task, cfg, None)
            row = {"rate": rate, "map": s, "faulty_pes": fm.n_faulty_pes, "fap": pruned, "fapt": {}, "seconds": {}}
            for b in budgets:
                model, res = fap_t(task.model, task.program, cfg, fm, x, y, b, seed=seed)
                row["fapt"][str(b)] = chip_accuracy(lower_like(model, task), task, bypass, fm)
                row["seconds"][str(b)] = res.seconds
            rows.append(row)
            print(f"  {size}x{size} rate {rate:.2f} map {s}: FAP {pruned:.4f}, FAP+T "
                  + ", ".join(f"{b} ep {row['fapt'][str(b)]:.4f}" for b in budgets), flush=True)
    return {"array": f"{size}x{size}", "clean_accuracy": clean, "base_epochs": base_epochs, "budgets": budgets,
            "train_images": n, "test_images": len(task.images), "rows": rows}


def few_faults(ckpt: str, maps: int, test_limit, seed: int) -> dict:
    """Accuracy of the unmitigated MLP on a 256x256 WS chip with a few faulty PEs."""
    from accel_models.evaluation import prepare
    from sysarray import ArrayConfig, FaultMap

    task = prepare(ckpt, limit=test_limit)
    cfg = ArrayConfig(256, 256, "ws")
    trace = task.program.trace(task.images, cfg)
    clean = trace.result.accuracy(task.labels)
    kinds = {"psum bits 24-31": dict(registers=("psum",), bits=range(24, 32)), "any register, any bit": {}}
    out = {"clean_accuracy": clean, "test_images": len(task.images), "kinds": {}}
    for kind, opts in kinds.items():
        table = []
        for count in COUNTS:
            accs = []
            for s in range(maps if count else 1):
                fm = FaultMap.random(cfg, pe_rate=count / (256 * 256), seed=np.random.SeedSequence([seed, count, s]), **opts)
                res = task.program.run(task.images, cfg, faults=fm, reference=trace, count_changes=False)
                accs.append(res.accuracy(task.labels))
            table.append({"faulty_pes": count, "pe_rate": count / 65536, "accuracies": accs,
                          "mean": float(np.mean(accs)), "min": float(np.min(accs))})
            print(f"  {kind}: {count} faulty PEs -> mean {np.mean(accs):.4f}, min {np.min(accs):.4f}", flush=True)
        out["kinds"][kind] = table
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 maps per rate/count, Fashion-MNIST 5,000 train / 1,000 test")
    ap.add_argument("--maps", type=int, default=3, help="maps per rate and per fault count (default 3)")
    ap.add_argument("--fapt-epochs", default="base,10",
                    help="FAP+T budgets, comma-separated epochs or 'base' (the base model's epochs; default base,10)")
    ap.add_argument("--train", type=int, default=10000, help="Fashion-MNIST training images (default 10000)")
    ap.add_argument("--test", type=int, default=2000, help="Fashion-MNIST test images judged (default 2000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    sysarray.runtime.set_threads(args.threads, numba_threads=sysarray.runtime.usable_cores())
    maps = 2 if args.quick else args.maps
    n_train, n_test = (5000, 1000) if args.quick else (args.train, args.test)

    def budgets(base: int) -> list[int]:
        out = [base if b.strip() == "base" else int(b) for b in args.fapt_epochs.split(",")]
        return sorted(set(out), key=out.index)

    import tempfile
    results = {}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_fapt-") as tmp:
        tmp = Path(tmp)
        ck, s = base_model("lenet5", "digits", 40, tmp, None)
        print(f"LeNet-5 on digits trained in {s:.1f} s")
        results["lenet5-digits-16x16"] = fapt_rates(ck, 16, 40, budgets(40), maps, None, None, args.seed)
        if os.path.isdir(FASHION_DIR):
            mlp_epochs = 10
            ck, s = base_model("mlp", "fashion-mnist", mlp_epochs, tmp, n_train, hidden=(256, 256, 256), dropout=0.0)
            print(f"MLP 784-256-256-256-10 on Fashion-MNIST trained in {s:.1f} s")
            results["few_faults_256x256"] = few_faults(ck, maps, n_test, args.seed)
            results["mlp-fashion-256x256"] = fapt_rates(ck, 256, mlp_epochs, budgets(mlp_epochs), maps, n_train,
                                                        n_test, args.seed)
        else:
            print(f"Fashion-MNIST not found at {FASHION_DIR}: the 256x256 part is skipped.")
    labels = [b.strip() for b in args.fapt_epochs.split(",")]
    rows = []
    for name, r in results.items():
        if "rows" not in r:
            continue
        for rate in RATES:
            sel = [x for x in r["rows"] if x["rate"] == rate]
            row = [name, f"{rate:.0%}", round(100 * r["clean_accuracy"], 2),
                   round(100 * np.mean([x["fap"] for x in sel]), 2)]
            for label in labels:
                b = r["base_epochs"] if label == "base" else int(label)
                accs = [x["fapt"][str(b)] for x in sel]
                row += [f"{100 * np.mean(accs):.2f} ({100 * (r['clean_accuracy'] - np.mean(accs)):.2f})"]
            rows.append(row)
    b_heads = [f"FAP+T {'base model epochs' if lb == 'base' else lb + ' ep'} % (drop)" for lb in labels]
    t1 = format_table(["model / array", "faulty PEs", "fault-free %", "FAP %"] + b_heads, rows,
                      title=f"FAP and FAP+T on bypass chips, mean over {maps} maps per rate (base model epochs: LeNet-5 40, "
                            f"MLP 10)")
    text = t1
    ff = results.get("few_faults_256x256")
    if ff:
        kinds = list(ff["kinds"])
        frows = []
        for i, count in enumerate(COUNTS):
            frows.append([count, f"{100 * count / 65536:.4f}%"]
                         + [f"{100 * ff['kinds'][k][i]['mean']:.2f} / {100 * ff['kinds'][k][i]['min']:.2f}" for k in kinds])
        text += "\n\n" + format_table(["faulty PEs", "PE rate"] + [f"{k}: mean / min %" for k in kinds], frows,
                                      title=f"MLP 784-256-256-256-10 on a 256x256 WS array without mitigation "
                                            f"(Fashion-MNIST, {ff['test_images']} test images; {maps} maps per count)")
    print(text)
    out = Path(args.out)
    write_json(out / "bench_fapt.json", {"benchmark": "bench_fapt", "maps": maps, "rates": list(RATES),
                                         "counts": list(COUNTS), "fashion_train": n_train, "fashion_test": n_test,
                                         "threads": args.threads, "wall_s": time.perf_counter() - t_start,
                                         "results": results,
                                         **provenance(TUNING, "quick" if args.quick else "full", REPO)})
    (out / "bench_fapt.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
