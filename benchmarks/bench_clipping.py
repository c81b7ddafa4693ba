"""Resilience of clipped activations: accuracy versus fault rate for no clipping, Ranger,
FT-ClipAct, FitAct and ProAct, on faulty chips and under weight-memory bit flips.

Run from the repository root::

    .venv/bin/python benchmarks/bench_clipping.py [--quick] [--chips N] [--out DIR] [--skip-fashion] [--settings a,b,c,d]

Models: LeNet-5 on ``digits`` (trained here, 40 epochs) and a VGG-11-style net (width 0.25) on
Fashion-MNIST from /usr/share/datasets/fashion-mnist (skipped with a message when absent; trained
here on a subset, evaluated on the first ``--fashion-test`` test images). Fault settings:

(a) chip: 16x16 output-stationary array, psum (accumulator) bits 24-30 stuck at 1 in a share of
    the PEs (``--pe-rates``), ``--chips`` seeded chips per rate;
(b) memory: bit flips in the stored int8 weights and threshold codes at a bit error rate
    (``--bers``), ``--chips`` seeded draws per rate;
(c) chip, WS: the same faults on a weight-stationary array (a psum fault corrupts a whole output
    column, including the logits'), for the record;
(d) memory, float32: bit flips in the IEEE-754 words of the float model's conv/linear weights and
    thresholds at a bit error rate (``--bers32``), ``--chips`` seeded draws per rate, judged on
    the float model (the clipping papers' setting).

FT-ClipAct searches with the fault site of the setting it is judged on ((a) chip, (b) int8 memory,
(d) float32 memory), over that setting's rates (its AUC grid), ``--ft-repetitions`` draws per
rate (default 3; seeds apart from the evaluation's), on 128 validation images, with its default
rounds (3-4) and clean-accuracy guard (``clean_drop`` 0.5 points). FitAct and ProAct run with
their default budgets (FitAct up to 100 epochs with early stopping, ProAct 5 + 100 epochs per
weight decay, 11 decays). ``--quick``: 4 draws per rate, FT-ClipAct 2 repetitions and 1-2
rounds, FitAct at most 20 epochs, ProAct 1 + 10 epochs per decay; ``--fitact-epochs``,
``--proact-epochs`` and ``--proact-warmup`` set those budgets in either mode.
``--settings`` picks the settings to run (default all; a method only a skipped setting needs is
not searched).
Writes OUT/bench_clipping.json and OUT/bench_clipping.png, and prints the tables (mean and worst
accuracy over the chips, in %).
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
import torch  # noqa: E402

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import format_table, provenance, write_json  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FASHION_DIR = "/usr/share/datasets/fashion-mnist"
METHODS = ("none", "ranger", "ftclipact", "fitact", "proact")
SETTINGS = {"a": "chip_os", "b": "memory", "c": "chip_ws", "d": "memory_float32"}
TITLES = {"chip_os": "(a) 16x16 OS chip, psum bits 24-30 stuck at 1, PE rate",
          "memory": "(b) int8 weight-memory bit flips, BER",
          "chip_ws": "(c) 16x16 WS chip, same faults, PE rate",
          "memory_float32": "(d) float32 weight-memory bit flips (float model), BER"}


def train_model(name: str, data, epochs: int, cache: Path, **kw):
    from accel_models.checkpoint import load_checkpoint, save_checkpoint
    from accel_models.train import train_zoo_model

    path = cache / f"{name}-{data.name}-{epochs}.pt"
    if path.exists():
        return load_checkpoint(path)[0]
    model, history = train_zoo_model(name, data, epochs, 0, progress=True, **kw)
    save_checkpoint(path, model, dataset=data, history=history)
    return model


def harden(model, data, args, chip_site, mem_site, mem32_site):
    from mitigation.clipping import find_thresholds

    ft = dict(calibration_images=128, **(dict(min_rounds=1, max_rounds=2) if args.quick else {}))
    out = {}
    wanted = [("ranger", {}), ("ftclipact-chip", dict(faults=chip_site, **ft)),
              ("ftclipact-memory", dict(faults=mem_site, **ft)), ("ftclipact-float32", dict(faults=mem32_site, **ft)),
              ("fitact", dict(epochs=args.fitact_epochs)),
              ("proact", dict(epochs=args.proact_epochs, warmup_epochs=args.proact_warmup))]
    skip = {"ftclipact-chip": not {"chip_os", "chip_ws"} & set(args.settings),
            "ftclipact-memory": "memory" not in args.settings, "ftclipact-float32": "memory_float32" not in args.settings}
    for method, kw in wanted:
        if skip.get(method):
            continue
        t0 = time.perf_counter()
        res = find_thresholds(model, data, method.split("-")[0], progress=True, **kw)
        out[method] = res
        print(f"  {method}: {res.thresholds} thresholds ({res.overhead:.3%} of {res.model_parameters:,} parameters), "
              f"{res.seconds:.1f} s (wall {time.perf_counter() - t0:.1f} s)", flush=True)
    return out


def evaluate(targets: dict, site, x, y) -> dict:
    """Mean and worst accuracy (%) per rate of each program (or float model, float32 site)."""
    out = {}
    for name, p in targets.items():
        curve = site.curve(p, x, y) * 100  # (rates, chips)
        out[name] = {"mean": curve.mean(1).tolist(), "worst": curve.min(1).tolist()}
    return out


def run_model(label, model, data, x, y, args):
    import sysarray as sa
    from mitigation.clipping import FaultSetting, lower_clipped

    reps = args.chips
    chip_site = FaultSetting.chip(rates=tuple(args.pe_rates), repetitions=reps, dataflow="os", seed=7)
    ws_site = FaultSetting.chip(rates=(0.004, 0.01), repetitions=reps, dataflow="ws", seed=7)
    mem_site = FaultSetting(rates=tuple(args.bers), repetitions=reps, seed=7)
    mem32_site = FaultSetting(rates=tuple(args.bers32), repetitions=reps, seed=7, weight_format="float32")
    # FT-ClipAct's AUC grid: the rates of the table it is judged in, draws seeded apart from the evaluation's
    ft_chip = FaultSetting.chip(rates=chip_site.rates, repetitions=args.ft_repetitions, dataflow="os", seed=99)
    ft_mem = FaultSetting(rates=mem_site.rates, repetitions=args.ft_repetitions, seed=99)
    ft_mem32 = FaultSetting(rates=mem32_site.rates, repetitions=args.ft_repetitions, seed=99, weight_format="float32")
    print(f"{label}: hardening", flush=True)
    results = harden(model, data, args, ft_chip, ft_mem, ft_mem32)
    programs = {"none": lower_clipped(model, data)}
    programs.update({k: lower_clipped(r.model, data) for k, r in results.items()})
    cfg = sa.ArrayConfig(16, 16, "os")
    clean = {k: 100 * p.run(x, cfg).accuracy(y) for k, p in programs.items()}
    floats = {"none": model.eval(), **{k: r.model for k, r in results.items()}}
    with torch.no_grad():
        clean_float = {k: 100 * float((m(x).argmax(1) == y).double().mean()) for k, m in floats.items()}
    print(f"{label}: evaluating", flush=True)
    chip_programs = {k: v for k, v in programs.items() if k not in ("ftclipact-memory", "ftclipact-float32")}
    mem_programs = {k: v for k, v in programs.items() if k not in ("ftclipact-chip", "ftclipact-float32")}
    mem32_models = {k: v for k, v in floats.items() if k not in ("ftclipact-chip", "ftclipact-memory")}
    res = {"clean": clean, "clean_float": clean_float}
    if "chip_os" in args.settings:
        res["chip_os"] = {"rates": chip_site.rates, **evaluate(chip_programs, chip_site, x, y)}
    if "memory" in args.settings:
        res["memory"] = {"rates": mem_site.rates, **evaluate(mem_programs, mem_site, x, y)}
    if "chip_ws" in args.settings:
        res["chip_ws"] = {"rates": ws_site.rates,
                          **evaluate({k: chip_programs[k] for k in ("none", "ranger")}, ws_site, x, y)}
    if "memory_float32" in args.settings:
        res["memory_float32"] = {"rates": mem32_site.rates, **evaluate(mem32_models, mem32_site, x, y)}
    res.update({
        "methods": {k: {"thresholds": r.thresholds, "overhead": r.overhead, "seconds": r.seconds,
                        "model_parameters": r.model_parameters, "summary": summarize(k, r)} for k, r in results.items()},
        "images": int(len(x)), "chips_per_rate": reps,
    })
    return res


def summarize(method: str, r) -> dict:
    """What each search did, for the doc: thresholds against the profiled maxima, FT-ClipAct's
    rounds and scores, FitAct's stopping epoch, ProAct's accepted and rolled-back epochs."""
    h = r.history
    if method.startswith("ftclipact"):
        return {n: {"max": L["max"], "threshold": L["threshold"], "score": L["score"], "converged": L["converged"],
                    "rounds": [{"candidates": rd["candidates"], "scores": rd["scores"]} for rd in L["rounds"]]}
                for n, L in h["layers"].items()}
    if method == "fitact":
        return {"best_epoch": h["best_epoch"], "stopped": h["stopped"], "epochs_run": len(h["epochs"]),
                "initial_val_loss": h["initial_val_loss"], "best_val_loss": h["best_val_loss"]}
    if method == "proact":
        return {"reference_val_accuracy": h["reference_val_accuracy"], "final_val_accuracy": h["final_val_accuracy"],
                "layers": {n: {"lr": L["lr"], "threshold_count": L["threshold_count"], "start_mean": L["start_mean"],
                               "end_mean": L["end_mean"],
                               "decays": [{"weight_decay": d["weight_decay"], "epochs_run": len(d["epochs"]),
                                           "violated": d["violated"]} for d in L["decays"]]}
                           for n, L in h["layers"].items()}}
    return {}


def print_tables(label, r):
    rows = [[k, v["thresholds"], f"{100 * v['overhead']:.3f}%", round(v["seconds"], 1), round(r["clean"][k], 2),
             round(r["clean_float"][k], 2)] for k, v in r["methods"].items()]
    rows.insert(0, ["none", 0, "0%", 0.0, round(r["clean"]["none"], 2), round(r["clean_float"]["none"], 2)])
    print(format_table(["method", "thresholds", "of params", "find s", "fault-free % (chip)", "fault-free % (float)"], rows,
                       title=f"\n{label}"))
    for key, title in TITLES.items():
        if key not in r:
            continue
        sec = r[key]
        head = ["method"] + [f"{rate:g} mean/worst" for rate in sec["rates"]]
        rows = [[k] + [f"{m:.1f}/{w:.1f}" for m, w in zip(sec[k]["mean"], sec[k]["worst"])]
                for k in sec if k != "rates"]
        print(format_table(head, rows, title=f"{label} {title}"))


def plot(all_results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(m, k) for m in all_results for k in ("chip_os", "memory", "memory_float32") if k in all_results[m]]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (model, key) in zip(axes[0], panels):
        sec = all_results[model][key]
        for name in sec:
            if name == "rates":
                continue
            line, = ax.plot(sec["rates"], sec[name]["mean"], marker="o", label=name)
            ax.plot(sec["rates"], sec[name]["worst"], ls=":", color=line.get_color())
        ax.set_xscale("log")
        ax.set_xlabel("PE fault rate" if key == "chip_os" else "bit error rate")
        ax.set_ylabel("accuracy % (solid mean, dotted worst)")
        what = {"chip_os": "OS chip psum stuck-at-1", "memory": "int8 weight-memory flips",
                "memory_float32": "float32 weight-memory flips"}[key]
        ax.set_title(f"{model}: {what}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)  # each panel has its own FT-ClipAct search
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _paper_budgets(args) -> bool:
    """Whether FitAct and ProAct ran with the papers' budgets (the defaults of a full run)."""
    return args.fitact_epochs >= 100 and args.proact_epochs >= 100 and args.proact_warmup >= 5


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer chips and shorter searches")
    p.add_argument("--chips", type=int, help="chips (draws) per rate (default 10, quick 4)")
    p.add_argument("--pe-rates", default="0.005,0.01,0.02,0.05")
    p.add_argument("--bers", default="1e-3,1e-2,3e-2,5e-2", help="int8 weight-memory bit error rates, setting (b)")
    p.add_argument("--bers32", default="1e-6,1e-5,3e-5,1e-4,3e-4", help="float32 weight-memory bit error rates, setting (d)")
    p.add_argument("--settings", default="a,b,c,d", help="fault settings to run, of a (OS chip), b (int8 memory), "
                                                         "c (WS chip), d (float32 memory); default all")
    p.add_argument("--ft-repetitions", type=int, help="FT-ClipAct's fault draws per rate (default 3, quick 2)")
    p.add_argument("--fitact-epochs", type=int, help="FitAct's most epochs (default 100, its own; quick 20)")
    p.add_argument("--proact-epochs", type=int, help="ProAct's epochs per weight decay (default 100, its own; quick 10)")
    p.add_argument("--proact-warmup", type=int, help="ProAct's warm-up epochs per weight decay (default 5; quick 1)")
    p.add_argument("--fashion-train", type=int, default=12000, help="Fashion-MNIST training images used")
    p.add_argument("--fashion-test", type=int, default=1000, help="Fashion-MNIST test images evaluated")
    p.add_argument("--fashion-epochs", type=int, default=4)
    p.add_argument("--skip-fashion", action="store_true")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = p.parse_args(argv)
    args.chips = args.chips or (4 if args.quick else 10)
    args.ft_repetitions = args.ft_repetitions or (2 if args.quick else 3)
    args.fitact_epochs = args.fitact_epochs or (20 if args.quick else 100)
    args.proact_epochs = args.proact_epochs or (10 if args.quick else 100)
    args.proact_warmup = (1 if args.quick else 5) if args.proact_warmup is None else args.proact_warmup
    args.pe_rates = [float(r) for r in args.pe_rates.split(",")]
    args.bers = [float(r) for r in args.bers.split(",")]
    args.bers32 = [float(r) for r in args.bers32.split(",")]
    bad = [t for t in args.settings.split(",") if t not in SETTINGS]
    if bad:
        p.error(f"--settings takes letters of {', '.join(SETTINGS)}. Got {', '.join(bad)}.")
    args.settings = [SETTINGS[t] for t in args.settings.split(",")]
    from accel_models.data import load_dataset

    cache = REPO / ".cache" / "bench_clipping"
    cache.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    t0 = time.perf_counter()
    all_results = {}
    digits = load_dataset("digits")
    lenet = train_model("lenet5", digits, 40, cache)
    all_results["LeNet-5/digits"] = run_model("LeNet-5/digits", lenet, digits, digits.test_x, digits.test_y, args)
    print_tables("LeNet-5/digits", all_results["LeNet-5/digits"])
    if args.skip_fashion:
        print("Fashion-MNIST: skipped (--skip-fashion)")
    elif not os.path.isdir(FASHION_DIR):
        print(f"Fashion-MNIST: skipped, no data at {FASHION_DIR} (apt-get install dataset-fashion-mnist)")
    else:
        fashion = load_dataset("fashion-mnist", FASHION_DIR, limit_train=args.fashion_train)
        vgg = train_model("vgg11", fashion, args.fashion_epochs, cache)
        n = min(args.fashion_test, len(fashion.test_x))
        all_results["VGG-11/fashion"] = run_model("VGG-11/fashion", vgg, fashion, fashion.test_x[:n], fashion.test_y[:n], args)
        print_tables("VGG-11/fashion", all_results["VGG-11/fashion"])
    report = {"benchmark": "bench_clipping", "settings": {k: v for k, v in vars(args).items()},
              "results": all_results, "seconds": time.perf_counter() - t0,
              **provenance(TUNING, "quick" if args.quick else "full" if _paper_budgets(args) else "reduced budget", REPO)}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "bench_clipping.json", report)
    plot(all_results, out / "bench_clipping.png")
    print(f"\nwrote {out / 'bench_clipping.json'} and {out / 'bench_clipping.png'} ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
