"""`sysarray fat` and `sysarray efat` end to end, and their one-line errors (exit 2)."""
from __future__ import annotations

import json

import pytest

from sysarray import ArrayConfig, FaultMap
from sysarray.cli import main
from tests.clitools import run_cli


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli-fat") / "lenet.pt"
    assert main(["train", "--arch", "lenet5", "--dataset", "digits", "--epochs", "20", "--seed", "0",
                 "--quiet", "-o", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def chips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli-chips")
    for i, rate in enumerate((0.04, 0.08, 0.08, 0.12)):
        FaultMap.random((16, 16), pe_rate=rate, seed=i).save(folder / f"chip-{i}.npz")
    return folder


def test_fat_fapt_then_run_gives_the_same_accuracy(lenet, chips, tmp_path, capsys):
    out_model, js = tmp_path / "chip_model.pt", tmp_path / "fat.json"
    chip = chips / "chip-3.npz"
    code, out, err = run_cli(["fat", "--model", lenet, "--faults", chip, "--method", "fapt", "--epochs", "2",
                              "--quiet", "--json", js, "-o", out_model], capsys)
    assert code == 0, err
    assert "before" in out and "after" in out and "epochs" in out and " s;" in out
    rep = json.loads(js.read_text())
    assert rep["epochs"] == 2 and rep["seconds"] > 0 and rep["accuracy_after"] > rep["accuracy_before"]
    run_js = tmp_path / "run.json"
    code, out, err = run_cli(["run", "--model", out_model, "--faults", chip, "--bypass", "--json", run_js], capsys)
    assert code == 0, err
    assert json.loads(run_js.read_text())["accuracy"] == rep["accuracy_after"]


def test_efat_writes_the_report(lenet, chips, tmp_path, capsys):
    out = tmp_path / "efat"
    code, stdout, err = run_cli(["efat", "--model", lenet, "--faults-dir", chips, "--max-drop", "0.06", "--bypass",
                                 "--rates", "0,0.1,0.2", "--amounts", "0,1", "--maps-per-rate", "1", "--quiet",
                                 "-o", out], capsys)
    assert code == 0, err
    cost = json.loads((out / "cost.json").read_text())
    for key in ("conventional_epochs", "per_chip_epochs", "efat_epochs", "chips", "rejected", "violations"):
        assert key in cost
    assert cost["chips"] == 4
    assert "| conventional FAT" in stdout and (out / "cost.md").exists()
    groups = json.loads((out / "groups.json").read_text())["groups"]
    assert sorted(m for g in groups for m in g["members"]) == sorted(set(cost["accuracy"]) - set(cost["rejected"]))
    assert len(list((out / "groups").glob("group-*.pt"))) >= len(groups)
    assert (out / "resilience.csv").exists() and (out / "resilience.png").exists()


@pytest.mark.parametrize("extra, message", [
    (["--dataflow", "os"], "weight-stationary"),
    (["--array", "8x8"], "--array 8x8 does not match the fault-map file"),
])
def test_fat_bad_input_is_one_line(lenet, chips, tmp_path, capsys, extra, message):
    code, out, err = run_cli(["fat", "--model", lenet, "--faults", chips / "chip-0.npz", "--method", "fap",
                              "-o", tmp_path / "m.pt", *extra], capsys)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1


def test_efat_bad_input_is_one_line(lenet, chips, tmp_path, capsys):
    small = tmp_path / "small"
    small.mkdir()
    FaultMap.random(ArrayConfig(8, 8), pe_rate=0.1, seed=0).save(small / "c.npz")
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["--faults-dir", small, "--max-drop", "0.02"], "is a 8x8 array but the model runs on 16x16"),
        (["--faults-dir", chips, "--min-accuracy", "0.9999"], "above the fault-free accuracy"),
        (["--faults-dir", empty, "--max-drop", "0.02"], "holds no fault-map files"),
        (["--faults-dir", chips, "--max-drop", "0.02", "--min-accuracy", "0.9"], "not allowed with argument"),
        (["--faults-dir", chips, "--max-drop", "0.02", "--amounts", "0,x"], "argument --amounts: must be comma-separated"),
    ]
    for args, message in cases:
        code, out, err = run_cli(["efat", "--model", lenet, "--bypass", "--quiet", "-o", tmp_path / "o", *args], capsys)
        assert code == 2, args
        assert message in err, err
        assert len(err.strip().splitlines()) == 1
