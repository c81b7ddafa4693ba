"""``sysarray report DIR``: PNG plots and a Markdown summary of a campaign directory.

- Rate campaigns (``grid``, ``files``): ``accuracy_vs_rate.png``, mean accuracy per fault group
  versus the fault rate with its bootstrap confidence band (log rate axis when the rates span a
  decade or more), and the aggregate table.
- Single-fault sweeps (``single``): ``heatmap.png``, the drop of one stuck bit at each PE, one
  panel per (register, bit, value), unswept PEs grey and hatched; ``bit_sensitivity.png``, the mean
  drop versus bit position per register and stuck value, from a drop of 0 up; with an
  ``importance.json`` also the PE sensitivity map and the samplers' table.

Plots use matplotlib's object API on an Agg canvas (no pyplot state, no display needed); each
``plot_*`` saves the Figure its ``figure_*`` twin returns, and the confidence level of every band
and error bar is in the plot.
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
from sysarray.atomic import atomic_write, write_text

REPORT = "report.md"
UNSWEPT = "not swept"


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig: Any, path: str) -> str:
    """Write ``fig`` as a PNG atomically; no software version in the metadata, so reruns give the same bytes."""
    atomic_write(path, lambda f: fig.savefig(f, format="png", metadata={"Software": None}), binary=True)
    return path


def _percent(confidence: float) -> str:
    return f"{100 * float(confidence):g}%"


def rate_axis_scale(rates: Sequence[float]) -> tuple[str, float | None]:
    """``(scale, linthresh)`` of a fault-rate axis: ``"linear"`` unless the positive rates span a
    decade or more, then ``"log"``, or ``"symlog"`` with its linear part below the smallest positive
    rate when rate 0 (the fault-free point) is among them (a log axis cannot show 0)."""
    r = np.asarray([float(x) for x in rates], dtype=np.float64)
    positive = r[r > 0]
    if positive.size < 2 or math.log10(positive.max() / positive.min()) < 1 - 1e-9:
        return ("linear", None)
    return ("symlog", float(positive.min())) if (r == 0).any() else ("log", None)


def figure_accuracy_vs_rate(agg: Sequence[dict], clean: float | None = None, rate_name: str = "fault rate",
                            confidence: float = 0.95) -> Any:
    """The Figure of :func:`plot_accuracy_vs_rate`."""
    from matplotlib.patches import Patch

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
    scale, linthresh = rate_axis_scale([float(r["rate"]) for r in agg])
    if scale == "symlog":
        ax.set_xscale("symlog", linthresh=linthresh, linscale=0.5)
        ax.set_xlim(left=-0.25 * linthresh)  # rates are never negative: show 0 at the left edge, not a mirrored axis
    elif scale == "log":
        ax.set_xscale("log")
    if clean is not None:
        ax.axhline(clean, color="grey", linestyle=":", linewidth=1, label="fault-free")
    handles, _ = ax.get_legend_handles_labels()
    band = Patch(facecolor="grey", alpha=0.2, label=f"{_percent(confidence)} confidence band (bootstrap)")
    ax.set_xlabel(rate_name + (" (log scale; 0 = fault-free)" if scale == "symlog" else
                               " (log scale)" if scale == "log" else ""))
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(handles=handles + [band], fontsize=8)
    ax.set_title(f"Accuracy versus fault rate (mean, {_percent(confidence)} confidence band)")
    return fig


def plot_accuracy_vs_rate(agg: Sequence[dict], path: str, clean: float | None = None, rate_name: str = "fault rate",
                          confidence: float = 0.95) -> str:
    """Mean accuracy versus rate per group, with the interval ``mean_accuracy_lo..hi`` (at
    ``confidence``, stated in the legend and title) as a band. A log rate axis when the positive
    rates span a decade or more (:func:`rate_axis_scale`)."""
    return _save(figure_accuracy_vs_rate(agg, clean, rate_name, confidence), path)


def heatmap_grid(n: int) -> tuple[int, int]:
    """``(rows, cols)`` of panels for ``n`` heatmaps: near square, at most 4 columns up to 16 panels."""
    cols = min(n, 4) if n <= 16 else math.ceil(math.sqrt(n))
    return (-(-n // max(cols, 1)), cols)


def figure_heatmaps(maps: dict[tuple[str, int, int], np.ndarray], title: str = "accuracy drop of one fault") -> Any:
    """The Figure of :func:`plot_heatmaps`: one panel per site, every site."""
    from matplotlib import colormaps
    from matplotlib.patches import Patch, Rectangle

    keys = list(maps)
    if not keys:
        raise ValueError("plot_heatmaps needs at least one (register, bit, value) heatmap. Got an empty dict instead.")
    n = len(keys)
    nrows, ncols = heatmap_grid(n)
    panel = 3.2 if ncols <= 4 else 2.4
    fig = _figure(panel * ncols + 0.8, (panel - 0.2) * nrows + 0.4)
    values = np.concatenate([maps[k][np.isfinite(maps[k])] for k in keys])
    vmin = min(0.0, float(values.min())) if values.size else 0.0
    vmax = max(1e-9, float(np.abs(values).max())) if values.size else 1e-9
    cmap = colormaps["magma_r"].with_extremes(bad=(0.0, 0.0, 0.0, 0.0))  # unswept: see-through to the hatching below
    axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(n)]
    im = None
    for ax, key in zip(axes, keys):
        grid = maps[key]
        r, c = grid.shape
        ax.add_patch(Rectangle((-0.5, -0.5), c, r, facecolor="0.85", edgecolor="0.55", hatch="///", linewidth=0,
                               zorder=0))
        im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest", zorder=1)
        ax.set_title(f"{key[0]} bit {key[1]} stuck-at-{key[2]}", fontsize=9 if ncols <= 4 else 8)
        ax.set_xlabel("PE column", fontsize=8)
        ax.set_ylabel("PE row", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.colorbar(im, ax=axes, shrink=0.8, label=title)
    if any(not np.isfinite(maps[k]).all() for k in keys):
        unswept = Patch(facecolor="0.85", edgecolor="0.55", hatch="///", label=UNSWEPT)
        fig.legend(handles=[unswept], loc="outside lower center", fontsize=8)
    return fig


def plot_heatmaps(maps: dict[tuple[str, int, int], np.ndarray], path: str,
                  title: str = "accuracy drop of one fault") -> str:
    """One panel per (register, bit, value), all of them: the drop of a single fault at each PE.

    PEs not swept (NaN) are grey and hatched, and named in the legend; a zero drop is the
    colormap's zero colour."""
    return _save(figure_heatmaps(maps, title), path)


def figure_bit_sensitivity(rows: Sequence[dict], confidence: float = 0.95) -> Any:
    """The Figure of :func:`plot_bit_sensitivity`."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure(7, 4.5)
    ax = fig.add_subplot()
    series: dict[str, list[dict]] = {}
    for r in rows:
        series.setdefault(f"{r['register']} stuck-at-{r['value']}", []).append(r)
    lowest, highest = 0.0, 0.0
    for name, members in series.items():
        members = sorted(members, key=lambda r: r["bit"])
        x = np.array([m["bit"] for m in members])
        y = np.array([m["mean_drop"] for m in members], dtype=np.float64)
        lo = np.minimum(np.array([m["mean_drop_lo"] for m in members], dtype=np.float64), y)
        hi = np.maximum(np.array([m["mean_drop_hi"] for m in members], dtype=np.float64), y)
        ax.errorbar(x, y, yerr=np.array([y - lo, hi - y]), marker="o", capsize=3, label=name)
        lowest, highest = min(lowest, float(np.nanmin(lo))), max(highest, float(np.nanmax(hi)))
    span = max(highest - lowest, 1e-3)
    ax.set_ylim(lowest - (0.03 * span if lowest < 0 else 0.0), highest + 0.05 * span)  # a drop axis includes 0
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("bit position")
    ax.set_ylabel("mean accuracy drop of one fault")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title=f"error bars: {_percent(confidence)} bootstrap CI", title_fontsize=8)
    ax.set_title(f"Bit sensitivity (mean drop, {_percent(confidence)} confidence intervals)")
    return fig


def plot_bit_sensitivity(rows: Sequence[dict], path: str, confidence: float = 0.95) -> str:
    """Mean drop versus bit position per (register, stuck value), with ``mean_drop_lo..hi`` error
    bars at ``confidence`` (stated in the legend and title); the y axis starts at 0 (or below a negative drop)."""
    return _save(figure_bit_sensitivity(rows, confidence), path)


def figure_sensitivity(sens: np.ndarray) -> Any:
    """The Figure of :func:`plot_sensitivity`."""
    fig = _figure(5, 4.2)
    ax = fig.add_subplot()
    im = ax.imshow(sens, cmap="viridis", interpolation="nearest")
    ax.set_title("PE sensitivity (sum of |w dL/dw|)")
    ax.set_xlabel("PE column")
    ax.set_ylabel("PE row")
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def plot_sensitivity(sens: np.ndarray, path: str) -> str:
    """The (R, C) PE sensitivity map of an importance run."""
    return _save(figure_sensitivity(sens), path)


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
        plot_accuracy_vs_rate(agg, os.path.join(directory, "accuracy_vs_rate.png"), clean, rate_name, conf)
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
        lines += ["## PE-array heatmap", "", f"Accuracy drop of a single stuck bit at each PE, {len(maps)} sites "
                  f"(grey, hatched: {UNSWEPT}).", "", "![heatmap](heatmap.png)", ""]
        bits = bit_sensitivity(rows, conf, seed)
        plot_bit_sensitivity(bits, os.path.join(directory, "bit_sensitivity.png"), conf)
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


__all__ = ["figure_accuracy_vs_rate", "figure_bit_sensitivity", "figure_heatmaps", "figure_sensitivity", "heatmap_grid",
           "markdown_table", "plot_accuracy_vs_rate", "plot_bit_sensitivity", "plot_heatmaps", "plot_sensitivity",
           "rate_axis_scale", "write_report"]
