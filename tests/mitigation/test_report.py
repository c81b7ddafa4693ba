"""`write_report` on hand-made campaign directories (no model needed)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mitigation.campaign import OUTCOME_COLUMNS, RateGrid, SingleFaults
from mitigation.campaign.store import CampaignStore
from mitigation.report import markdown_table, write_report

PNG = b"\x89PNG\r\n\x1a\n"


def make_store(path, kind, columns, rows, config_extra=None):
    config = {"array": {"rows": 4, "cols": 4, "dataflow": "ws", "psum_bits": 32, "bypass": False}, "engine": "fast",
              "critical_drop": 0.05, "confidence": 0.95, "task": {"dataset": "digits"}, **(config_extra or {})}
    with CampaignStore.open(str(path), kind, config, tuple(columns) + OUTCOME_COLUMNS, len(rows),
                            {"clean_accuracy": 0.9, "images": 100}) as st:
        st.append(rows)
        st.write_results()


def outcome(acc):
    return {"faulty_pes": 1, "stuck_bits": 1, "registers": "psum", "accuracy": acc, "drop": 0.9 - acc,
            "sdc_rate": 0.9 - acc, "critical": int(0.9 - acc > 0.05), "seconds": 0.01}


def test_rate_campaign_report(tmp_path):
    rng = np.random.default_rng(0)
    rows, i = [], 0
    for group, slope in (("psum:24-31:1", 8.0), ("psum:0-3:random", 0.0)):
        for rate in (0.0, 0.01, 0.05):
            for j in range(5):
                acc = float(np.clip(0.9 - slope * rate + rng.normal(0, 0.01) * (rate > 0), 0, 1))
                rows.append({"chip": i, "group": group, "rate": rate, "replica": j, "seed": 0, **outcome(acc)})
                i += 1
    make_store(tmp_path, "grid", RateGrid.columns, rows, {"population": {"kind": "grid", "method": "pe_rate"}})
    path = write_report(str(tmp_path))
    md = open(path).read()
    assert (tmp_path / "accuracy_vs_rate.png").read_bytes()[:8] == PNG
    assert "![accuracy versus fault rate](accuracy_vs_rate.png)" in md
    table = [line for line in md.splitlines() if line.startswith("| psum:")]
    assert len(table) == 6 and table[0].startswith("| psum:24-31:1 | 0 | 5 | 0.9000 [0.9000, 0.9000]")
    assert "fault-free accuracy 0.9" in md


def test_sweep_and_importance_report(tmp_path):
    rows = []
    for i, (bit, r, c) in enumerate((b, r, c) for b in (0, 7) for r in range(4) for c in range(4)):
        acc = 0.9 - (0.3 * (c == 1) if bit == 7 else 0.0)
        rows.append({"chip": i, "group": f"act:{bit}:1", "pe_row": r, "pe_col": c, "register": "act", "bit": bit,
                     "value": 1, **outcome(acc)})
    make_store(tmp_path, "single", SingleFaults.columns, rows, {"population": {"kind": "single"}})
    (tmp_path / "importance.json").write_text(json.dumps({
        "fault_space": 32, "precision_gain": 2.0, "sensitivity": np.ones((4, 4)).tolist(),
        **{k: {"sampler": k, "draws": 10, "precision": p, "distinct_critical": 3, "estimate": 0.125,
               "estimate_lo": 0.05, "estimate_hi": 0.3} for k, p in (("importance", 0.6), ("uniform", 0.3))}}))
    md = open(write_report(str(tmp_path))).read()
    for name in ("heatmap.png", "bit_sensitivity.png", "pe_sensitivity.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG
    assert "| act | 1 | 7 | 16 | 0.0750 [" in md and "| act | 1 | 0 | 16 | 0.0000 [0.0000, 0.0000]" in md
    assert "## Importance sampling" in md and "| importance | 10 | 0.6 | 3 | 0.1250 [0.0500, 0.3000] |" in md


def test_report_refuses_an_empty_campaign(tmp_path):
    make_store(tmp_path, "grid", RateGrid.columns, [])
    with pytest.raises(ValueError, match="no finished chips yet"):
        write_report(str(tmp_path))


def test_markdown_table():
    assert markdown_table([{"a": 0.123456, "b": "x"}], [("a", "A"), ("b", "B")]) == "| A | B |\n|---|---|\n| 0.1235 | x |"


# --------------------------------------------------------------------------- the plots' properties
def _agg(rates, groups=("g",)):
    return [{"group": g, "rate": r, "mean_accuracy": 0.9 - r, "mean_accuracy_lo": 0.85 - r,
             "mean_accuracy_hi": 0.95 - r} for g in groups for r in rates]


def _legend_texts(legend):
    return [t.get_text() for t in legend.get_texts()] + [legend.get_title().get_text()]


@pytest.mark.parametrize("rates, scale", [((0.0, 1e-3, 1e-2, 1e-1), "symlog"), ((1e-4, 1e-3, 1e-2), "log"),
                                          ((0.0, 0.01, 0.02, 0.05), "linear"), ((0.0, 1e-3, 1e-2), "symlog")])
def test_accuracy_vs_rate_uses_a_log_axis_for_rates_spanning_decades(rates, scale):
    from mitigation.report import figure_accuracy_vs_rate, rate_axis_scale

    fig = figure_accuracy_vs_rate(_agg(rates, ("a", "b")), clean=0.9, confidence=0.9)
    ax = fig.axes[0]
    assert ax.get_xscale() == scale and rate_axis_scale(rates)[0] == scale
    if scale == "symlog":  # 0 is shown, and on the left edge: no mirrored negative rates
        left, right = ax.get_xlim()
        assert -min(r for r in rates if r > 0) < left < 0 and right >= max(rates)
    texts = _legend_texts(ax.get_legend())
    assert "a" in texts and "b" in texts and "fault-free" in texts
    assert any("90% confidence band" in t for t in texts) and "90% confidence band" in ax.get_title()


def test_heatmaps_show_every_site_and_unswept_cells_differ_from_zero_drops():
    from matplotlib.colors import to_rgba

    from mitigation.report import UNSWEPT, figure_heatmaps

    maps = {}
    for i in range(25):
        grid = np.zeros((4, 6))
        grid[0, 0] = 0.1 * (i % 5)
        grid[3, 5] = np.nan  # not swept
        maps[("psum", i, 1)] = grid
    fig = figure_heatmaps(maps)
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 25  # every site, no cut-off at 12
    assert {ax.get_title() for ax in fig.axes if ax.images} == {f"psum bit {i} stuck-at-1" for i in range(25)}
    geometry = {ax.get_subplotspec().get_geometry()[:2] for ax in fig.axes if ax.images}
    assert geometry == {(5, 5)}  # the grid is sized to the sites
    im = images[0]
    zero = im.cmap(im.norm(0.0))
    assert im.norm.vmin == 0.0 and zero == im.cmap(0.0)  # a zero drop: the colormap's zero colour
    assert to_rgba(im.cmap.get_bad())[3] == 0.0  # unswept cells are see-through...
    under = [p for p in fig.axes[0].patches if p.get_hatch()]
    assert len(under) == 1 and under[0].get_zorder() < im.get_zorder()  # ...onto a hatched grey patch
    assert to_rgba(under[0].get_facecolor()) != zero
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [UNSWEPT]
    swept = figure_heatmaps({("act", 7, 1): np.zeros((2, 2))})
    assert sum(bool(ax.images) for ax in swept.axes) == 1 and not swept.legends  # nothing unswept: no legend entry


def test_bit_sensitivity_drop_axis_starts_at_zero_and_states_the_confidence():
    from mitigation.report import figure_bit_sensitivity

    rows = [{"register": "psum", "value": 1, "bit": b, "mean_drop": 0.7 + 0.01 * b, "mean_drop_lo": 0.65 + 0.01 * b,
             "mean_drop_hi": 0.75 + 0.01 * b} for b in range(24, 32)]
    ax = figure_bit_sensitivity(rows, confidence=0.99).axes[0]
    lo, hi = ax.get_ylim()
    assert lo == 0.0 and hi >= 0.75 + 0.31
    assert "99%" in ax.get_title() and any("99%" in t for t in _legend_texts(ax.get_legend()))
    rows.append({"register": "act", "value": 0, "bit": 3, "mean_drop": -0.01, "mean_drop_lo": -0.02,
                 "mean_drop_hi": 0.0})
    lo, _ = figure_bit_sensitivity(rows).axes[0].get_ylim()
    assert lo < -0.02  # a negative drop (a fault that helped) stays in view


def test_report_files_get_the_usual_mode(tmp_path):
    import os
    import stat

    from mitigation.report import plot_accuracy_vs_rate

    old = os.umask(0o022)
    try:
        path = plot_accuracy_vs_rate(_agg((0.0, 0.01)), str(tmp_path / "a.png"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644 and open(path, "rb").read(8) == PNG
