"""Manufacturing yield with diagnosis and mitigation (mitigation.yield_model, ``sysarray yield``).

Run from the repository root::

    .venv/bin/python benchmarks/bench_yield.py [--chips N] [--densities LIST] [--workers N] [--out DIR]

LeNet-5 trained on ``digits`` (seed 0, 30 epochs), on a 32x32 WS array with 32-bit psums and
bypass hardware, without and with 2 spare rows + 2 spare columns. At each defect density (defects
per PE; Poisson count, defective PEs uniform, one stuck bit each, register in proportion to its
bits), ``--chips`` dies go through diagnosis and the steps none, remap, arith, (spares,) bypass,
FAP+T (2 epochs), stopping at the first that keeps the accuracy drop within 1 point on the 359 test
images; then the eFAT groups step (``--efat-epochs`` per group, greedy grouping, fused rate at
most 5%) on the dies no step shipped. Writes ``OUT/bench_yield.json`` (both yield tables, the command, the machine) and
``OUT/bench_yield.png`` (yield vs density, both arrays), and prints the tables.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import sysarray.runtime

TUNING = sysarray.runtime.configure()  # a program: tuned first, before torch loads

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import provenance, train_base_model, write_json  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
VARIANTS = {"32x32": (0, 0), "32x32+2r2c": (2, 2)}


def _plot(tables: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    from mitigation.yield_model import no_defect_yield
    from sysarray.atomic import atomic_write

    fig = Figure(figsize=(11, 4.2), dpi=100, layout="constrained")
    for i, (name, table) in enumerate(tables.items()):
        ax = fig.add_subplot(1, len(tables), i + 1)
        rows = table["rows"]
        d = [r["density"] for r in rows]
        for step in table["steps"]:
            ax.plot(d, [r[f"yield_{step}"] for r in rows], marker="o", label=f"after {step}")
        per_pe = rows[-1]["lambda"] / rows[-1]["density"]
        grid = [max(d) * k / 100 for k in range(101)]
        ax.plot(grid, [no_defect_yield(g * per_pe) for g in grid], "k--", lw=1, label="Poisson exp(-lambda)")
        ax.plot(grid, [no_defect_yield(g * per_pe, "negbin", 2.0) for g in grid], "k:", lw=1,
                label="neg. binomial, alpha=2")
        ax.plot(d, [r["defect_free"] for r in rows], "kx", label="defect-free dies")
        ax.set_title(f"LeNet-5 / digits, {name} WS, drop <= 1 point", fontsize=9)
        ax.set_xlabel("defect density D0 (defects per PE)")
        ax.set_ylabel("share of dies shipped")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=7, loc="lower left")
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", metadata={"Software": None}), binary=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chips", type=int, default=24, help="dies per density (default 24)")
    ap.add_argument("--densities", default="0.0005,0.001,0.002,0.004", help="defects per PE, comma-separated")
    ap.add_argument("--epochs", type=float, default=2.0, help="FAP+T epochs (default 2)")
    ap.add_argument("--efat-epochs", type=float, default=8.0, help="epochs per eFAT group (default 8)")
    ap.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="output directory")
    args = ap.parse_args(argv)

    from mitigation.yield_model import EFAT_JSON, DefectPopulation, FlowSettings, GroupSettings, YieldTask, \
        default_steps, run_yield, table_markdown
    from sysarray import ArrayConfig

    densities = [float(x) for x in args.densities.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench_yield-"))
    try:
        ckpt, train_s = train_base_model("lenet5", "digits", 30, work / "lenet5.pt")
        tables, seconds, groups = {}, {}, {}
        for name, (a, b) in VARIANTS.items():
            cfg = ArrayConfig(32, 32, "ws", bypass=True, spare_rows=a, spare_cols=b)
            population = DefectPopulation(densities, args.chips, 0, model="poisson")
            settings = FlowSettings(steps=default_steps(cfg, efat=True), max_drop=0.01, epochs=args.epochs,
                                    groups=GroupSettings(epochs=args.efat_epochs))
            t0 = time.perf_counter()
            tables[name] = run_yield(YieldTask(ckpt, settings=settings), population, str(work / name), cfg,
                                     workers=args.workers)
            seconds[name] = time.perf_counter() - t0
            groups[name] = json.loads((work / name / EFAT_JSON).read_text())
            print(f"\n{name}: {population.size} dies in {seconds[name]:.0f} s; fault-free accuracy "
                  f"{tables[name]['clean_accuracy']:.4f}")
            print(table_markdown(tables[name]), end="")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "bench_yield.json", {
            "provenance": provenance(TUNING, "full"), "model": "lenet5", "dataset": "digits", "train_epochs": 30,
            "train_seconds": train_s, "chips_per_density": args.chips, "densities": densities,
            "fapt_epochs": args.epochs, "efat": settings.groups.to_dict(), "efat_groups": groups,
            "max_drop": 0.01, "tables": tables, "seconds": seconds,
            "markdown": {k: table_markdown(t) for k, t in tables.items()}})
        _plot(tables, out / "bench_yield.png")
        print(f"wrote {out / 'bench_yield.json'} and {out / 'bench_yield.png'}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
