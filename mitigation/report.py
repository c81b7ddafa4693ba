"""``sysarray report DIR``: PNG plots and a Markdown summary of a campaign directory.

- Rate campaigns (``grid``, ``files``): ``accuracy_vs_rate.png``, mean accuracy per fault group
  versus the fault rate with its bootstrap confidence band, and the aggregate table.
- Single-fault sweeps (``single``): ``heatmap.png``, the drop of one stuck bit at each PE per
  (register, bit, value); ``bit_sensitivity.png``, the mean drop versus bit position per register
  and stuck value; with an ``importance.json`` also the PE sensitivity map and the samplers' table.

Plots use matplotlib's object API on an Agg canvas (no pyplot state, no display needed).
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Sequence

import numpy as np

from mitigation.campaign.stats import aggregate
from mitigation.campaign.store import read_results
from mitigation.sweep import bit_sensitivity, heatmaps
from sysarray.atomic import write_text

REPORT = "report.md"
MAX_HEATMAPS = 12


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def plot_accuracy_vs_rate(agg: Sequence[dict], path: str, clean: float | None = None, rate_name: str = "fault rate") -> str:
    """Mean accuracy versus rate per group, with the interval ``mean_accuracy_lo..hi`` as a band."""
    fig = _figure(7, 4.5)
    ax = fig.add_subplot()
    groups: dict[str, list[dict]] = {}
    for row in agg:
        groups.setdefault(str(row["group"]), []).append(row)
    for name, rows in groups.items():
        rows = sorted(rows, key=lambda r: float(r["rate"]))
        x = np.array([float(r["rate"]) for r in rows])
        y = np.array([float(r["mean_accuracy"]) for r in rows])
        lo = np.array([float(r["mean_accuracy_lo"]) for r in rows])
        hi = np.array([float(r["mean_accuracy_hi"]) for r in rows])
        line, = ax.plot(x, y, marker="o", label=name)
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    rates = [float(r["rate"]) for r in agg]
    positive = [r for r in rates if r > 0]
    if positive and max(positive) / min(positive) >= 20:
        ax.set_xscale("symlog", linthresh=min(positive))
    if clean is not None:
        ax.axhline(clean, color="grey", linestyle=":", linewidth=1, label="fault-free")
    ax.set_xlabel(rate_name)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Accuracy versus fault rate (mean, confidence band)")
    fig.savefig(path)
    return path


def plot_heatmaps(maps: dict[tuple[str, int, int], np.ndarray], path: str, title: str = "accuracy drop of one fault") -> str:
    """One panel per (register, bit, value): the drop of a single fault at each PE (blank: not swept)."""
    keys = list(maps)[:MAX_HEATMAPS]
    n = len(keys)
    ncols = min(n, 4)
    nrows = -(-n // ncols)
    fig = _figure(3.2 * ncols + 0.8, 3.0 * nrows)
    vmax = max(1e-9, max(float(np.nanmax(np.abs(maps[k]))) if np.isfinite(maps[k]).any() else 0.0 for k in keys))
    axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(n)]
    im = None
    for ax, key in zip(axes, keys):
        grid = np.ma.masked_invalid(maps[key])
        im = ax.imshow(grid, cmap="magma_r", vmin=min(0.0, float(np.nanmin(maps[key])) if np.isfinite(maps[key]).any() else 0.0),
                       vmax=vmax, interpolation="nearest")
        ax.set_title(f"{key[0]} bit {key[1]} stuck-at-{key[2]}", fontsize=9)
        ax.set_xlabel("PE column", fontsize=8)
        ax.set_ylabel("PE row", fontsize=8)
        ax.tick_params(labelsize=7)
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.8, label=title)
    fig.savefig(path)
    return path


def plot_bit_sensitivity(rows: Sequence[dict], path: str) -> str:
    """Mean drop versus bit position per (register, stuck value), with interval error bars."""
    fig = _figure(7, 4.5)
    ax = fig.add_subplot()
    series: dict[str, list[dict]] = {}
    for r in rows:
        series.setdefault(f"{r['register']} stuck-at-{r['value']}", []).append(r)
    for name, members in series.items():
        members = sorted(members, key=lambda r: r["bit"])
        x = np.array([m["bit"] for m in members])
        y = np.array([m["mean_drop"] for m in members])
        err = np.array([[m["mean_drop"] - m["mean_drop_lo"] for m in members],
                        [m["mean_drop_hi"] - m["mean_drop"] for m in members]])
        ax.errorbar(x, y, yerr=np.clip(err, 0, None), marker="o", capsize=3, label=name)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("bit position")
    ax.set_ylabel("mean accuracy drop of one fault")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Bit sensitivity")
    fig.savefig(path)
    return path


def plot_sensitivity(sens: np.ndarray, path: str) -> str:
    fig = _figure(5, 4.2)
    ax = fig.add_subplot()
    im = ax.imshow(sens, cmap="viridis", interpolation="nearest")
    ax.set_title("PE sensitivity (sum of |w dL/dw|)")
    ax.set_xlabel("PE column")
    ax.set_ylabel("PE row")
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.savefig(path)
    return path


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def markdown_table(rows: Sequence[dict], columns: Sequence[tuple[str, str]]) -> str:
    """A Markdown table of ``rows`` with ``(key, header)`` columns."""
    head = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(_fmt(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, sep] + body)


def _interval(row: dict, key: str) -> str:
    return f"{row[key]:.4f} [{row[key + '_lo']:.4f}, {row[key + '_hi']:.4f}]"


def write_report(directory: str) -> str:
    """Write the plots and ``report.md`` into the campaign ``directory``; returns the report's path."""
    manifest, rows = read_results(directory)
    if not rows:
        raise ValueError(f"The campaign in '{directory}' has no finished chips yet; run it first.")
    config = manifest.get("config", {})
    info = manifest.get("info", {})
    conf = float(config.get("confidence", 0.95))
    seed = int(manifest["config_hash"][:8], 16)
    kind = manifest.get("kind")
    pop = config.get("population", {})
    clean = info.get("clean_accuracy")
    array = config.get("array", {})
    lines = [f"# Campaign report: {os.path.basename(os.path.abspath(directory))}", ""]
    lines.append(f"- kind: {kind}; chips finished: {len(rows)} of {manifest.get('chips')}")
    lines.append(f"- array: {array.get('rows')}x{array.get('cols')} {str(array.get('dataflow', '')).upper()}, "
                 f"{array.get('psum_bits')}-bit psum{', bypass' if array.get('bypass') else ''}; engine {config.get('engine')}")
    task = config.get("task", {})
    lines.append(f"- task: {task.get('dataset', task.get('program', '?'))}, {info.get('images', '?')} images; "
                 f"fault-free accuracy {_fmt(clean) if clean is not None else '?'}")
    lines.append(f"- critical: accuracy drop above {config.get('critical_drop')}; intervals at {conf:.0%} "
                 "(bootstrap for means, medians and quartiles; Wilson for shares)")
    if kind in ("grid", "files"):
        if kind == "grid":
            lines.append(f"- fault model: {pop.get('method')}, rates {pop.get('rates')}, {pop.get('chips_per_rate')} chips "
                         f"per rate and group, seed {pop.get('seed')}")
        lines.append("")
        agg = aggregate(rows, conf, seed=seed, keys=("group", "rate"))
        rate_name = "bit error rate" if pop.get("method") == "ber" else "PE fault rate"
        plot_accuracy_vs_rate(agg, os.path.join(directory, "accuracy_vs_rate.png"), clean, rate_name)
        lines += ["## Accuracy versus fault rate", "", "![accuracy versus fault rate](accuracy_vs_rate.png)", ""]
        table = [{**r, "mean": _interval(r, "mean_accuracy"), "median": _interval(r, "median_accuracy"),
                  "iqr": f"{r['q1_accuracy']:.4f}..{r['q3_accuracy']:.4f}",
                  "crit": f"{r['critical_share']:.3f} [{r['critical_share_lo']:.3f}, {r['critical_share_hi']:.3f}]",
                  "sdc": f"{r['mean_sdc_rate']:.4f}"} for r in agg]
        lines += ["## Aggregates", "", markdown_table(table, [
            ("group", "group"), ("rate", "rate"), ("chips", "chips"), ("mean", "mean accuracy [CI]"),
            ("median", "median [CI]"), ("iqr", "quartiles"), ("worst_accuracy", "worst"),
            ("sdc", "mean SDC rate"), ("crit", "critical share [CI]")]), ""]
    else:
        shape = (int(array.get("rows")), int(array.get("cols")))
        maps = heatmaps(rows, shape)
        plot_heatmaps(maps, os.path.join(directory, "heatmap.png"))
        lines += ["## PE-array heatmap", "", "Accuracy drop of a single stuck bit at each PE (blank: not swept)"
                  + (f"; the first {MAX_HEATMAPS} of {len(maps)} sites." if len(maps) > MAX_HEATMAPS else "."), "",
                  "![heatmap](heatmap.png)", ""]
        bits = bit_sensitivity(rows, conf, seed)
        plot_bit_sensitivity(bits, os.path.join(directory, "bit_sensitivity.png"))
        lines += ["## Bit sensitivity", "", "![bit sensitivity](bit_sensitivity.png)", "",
                  markdown_table([{**b, "drop": _interval(b, "mean_drop")} for b in bits], [
                      ("register", "register"), ("value", "stuck at"), ("bit", "bit"), ("faults", "faults"),
                      ("drop", "mean drop [CI]"), ("max_drop", "max drop"), ("critical_share", "critical share")]), ""]
        imp_path = os.path.join(directory, "importance.json")
        if os.path.exists(imp_path):
            with open(imp_path) as f:
                imp = json.load(f)
            plot_sensitivity(np.array(imp["sensitivity"]), os.path.join(directory, "pe_sensitivity.png"))
            samplers = [{**imp[k], "est": f"{imp[k]['estimate']:.4f} [{imp[k]['estimate_lo']:.4f}, {imp[k]['estimate_hi']:.4f}]"}
                        for k in ("importance", "uniform")]
            lines += ["## Importance sampling", "", f"Fault space: {imp['fault_space']} faults; "
                      f"precision gain {_fmt(imp.get('precision_gain'))}.", "",
                      markdown_table(samplers, [("sampler", "sampler"), ("draws", "draws"), ("precision", "precision"),
                                                ("distinct_critical", "distinct critical"),
                                                ("est", "critical fraction estimate [CI]")]),
                      "", "![PE sensitivity](pe_sensitivity.png)", ""]
    path = os.path.join(directory, REPORT)
    write_text(path, "\n".join(lines) + "\n")
    return path


__all__ = ["markdown_table", "plot_accuracy_vs_rate", "plot_bit_sensitivity", "plot_heatmaps", "plot_sensitivity",
           "write_report"]
