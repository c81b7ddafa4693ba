"""`sysarray diagnose`."""
from __future__ import annotations

import json

import pytest

import sysarray as sa
from tests.clitools import run_cli


def test_diagnose_a_fault_file_end_to_end(tmp_path, capsys):
    fm = sa.FaultMap(6, 6).add(1, 2, "weight", 7, 1).add(4, 0, "act", 2, 0).add(3, 5, "psum", 30, 1)
    fm.save(tmp_path / "chip.npz")
    code, out, err = run_cli(["diagnose", "--faults", tmp_path / "chip.npz", "--dataflow", "ws", "--seed", "1",
                              "-o", tmp_path / "report.json"], capsys)
    assert code == 0, err
    assert "located 3" in out and "confirmed" in out and "test cost: 2 GEMMs" in out
    lines = out.splitlines()
    assert any(line.split()[:2] == ["all", "3"] for line in lines)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["score"]["all"] == {"located": 3, "missed": 0, "aliased": 0, "undetectable": 0,
                                      "false_alarms": 0}
    assert report["cost"]["cycles"] > 0 and report["config"]["dataflow"] == "ws"


@pytest.mark.parametrize("args, message", [
    (["--array", "4by4"], "--array"),
    (["--refinements", "-1"], "--refinements"),
    (["--psum-bits", "40"], "--psum-bits"),
    (["--rate", "2"], "--rate"),
    (["--faults", "/no/such/chip.npz"], "does not exist"),
    (["--array", "4x4", "--rate", "0.01"], "places no faulty PE"),
    (["--faults", "CHIP", "--rate", "0.1"], "not both"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    sa.FaultMap(4, 4).save(tmp_path / "chip.npz")
    args = [str(tmp_path / "chip.npz") if a == "CHIP" else a for a in args]
    code, out, err = run_cli(["diagnose", *args], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err
