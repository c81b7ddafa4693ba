"""`sysarray yield` end to end: outputs, resume, and bad input as one line with exit code 2."""
from __future__ import annotations

import json

import pytest

from tests.clitools import run_cli, trained_mlp


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    return trained_mlp(tmp_path_factory.mktemp("yield"))


def test_yield_end_to_end_and_rerun(mlp, tmp_path, capsys):
    out = tmp_path / "y"
    argv = ["yield", "--model", mlp, "--array", "8x8", "--spare-rows", "1", "--spare-cols", "1", "--bypass",
            "--defect-density", "0.01,0.04", "--chips", "2", "--limit", "100", "--calibration-images", "32",
            "--workers", "1", "--quiet", "-o", out]
    code, text, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "steps none,remap,arith,spares,bypass,fapt" in text and "| D0 (defects/PE) |" in text
    table = json.loads((out / "yield.json").read_text())
    assert [r["density"] for r in table["rows"]] == [0.01, 0.04] and all(r["chips"] == 2 for r in table["rows"])
    assert table["steps"] == ["none", "remap", "arith", "spares", "bypass", "fapt"]
    header, *rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 4 and "shipped_step" in header and "acc_fapt" in header
    assert (out / "yield.png").stat().st_size > 0 and (out / "aggregates.csv").exists()
    first = (out / "results.csv").read_bytes()
    code, text, err = run_cli(argv, capsys)
    assert code == 0 and "nothing to do" in text and (out / "results.csv").read_bytes() == first


def test_yield_efat_step_interrupted_then_resumed(mlp, tmp_path, capsys, monkeypatch):
    from mitigation.yield_model import YieldEvaluator

    out = tmp_path / "e"
    argv = ["yield", "--model", mlp, "--array", "8x8", "--defect-density", "0.06", "--chips", "2", "--limit", "100",
            "--calibration-images", "32", "--steps", "efat,none,remap", "--max-drop", "0", "--efat-epochs", "0.5",
            "--efat-grouping", "fixed:2", "--efat-max-rate", "0.5", "--workers", "1", "--quiet", "-o", out]

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(YieldEvaluator, "group_outcome", stop)
        code, text, err = run_cli(argv, capsys)
    assert code == 130 and len(err.strip().splitlines()) == 1 and "efat step" in err and "rerun" in err
    assert (out / "results.csv").exists() and not (out / "efat_groups.json").exists()
    code, text, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "steps none,remap,efat" in text and "efat: 1 groups of 2 of the 2 dies" in text and "after efat" in text
    table = json.loads((out / "yield.json").read_text())
    efat = json.loads((out / "efat_groups.json").read_text())
    assert table["steps"] == ["none", "remap", "efat"] and efat["mode"] == "stuck-at"
    assert [g["members"] for g in efat["groups"]] == [[0, 1]]
    assert efat["groups"][0]["epochs"] == pytest.approx(0.5, abs=0.05)  # whole optimizer steps
    assert "acc_efat" not in (out / "results.csv").read_text().splitlines()[0]
    first = (out / "efat_groups.json").read_bytes()
    code, text, err = run_cli(argv, capsys)
    assert code == 0 and "nothing to do" in text and (out / "efat_groups.json").read_bytes() == first


@pytest.mark.parametrize("extra, message", [
    (["--defect-density", "2"], "argument --defect-density"),
    (["--defect-density", "0.1", "--steps", "none,foo"], "argument --steps"),
    (["--defect-density", "0.1", "--steps", "spares"], "needs an array with spare rows"),
    (["--defect-density", "0.1", "--steps", "none,fapt"], "needs bypass hardware"),
    (["--defect-density", "0.1", "--alpha", "1"], "--alpha is the clustering"),
    (["--defect-density", "0.1", "--defect-model", "negbin", "--alpha", "0"], "argument --alpha"),
    (["--defect-density", "0.1", "--register-mix", "weight=-1"], "argument --register-mix"),
    (["--defect-density", "0.1", "--max-drop", "1.5"], "argument --max-drop"),
    (["--defect-density", "0.1", "--device", "cuda"], "runs on the CPU only"),
    (["--defect-density", "0.1", "--efat-epochs", "4"], "add efat to --steps"),
    (["--defect-density", "0.1", "--steps", "none,efat", "--efat-grouping", "best"], "argument --efat-grouping"),
    (["--defect-density", "0.1", "--steps", "none,efat", "--efat-max-rate", "0"], "argument --efat-max-rate"),
    ([], "--defect-density"),
])
def test_bad_input_is_one_line_and_exit_2(extra, message, tmp_path, capsys):
    code, out, err = run_cli(["yield", "--model", "missing.pt", *extra, "-o", tmp_path / "o"], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
