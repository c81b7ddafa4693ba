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
