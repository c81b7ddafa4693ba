"""A user's own model (a factory in a .py file) and own data (an .npz file) through every command:
`import-model`, then `run`, `campaign`, `sweep`, `importance`, `clip`, `fat` and `efat` on its
checkpoint, with the smallest settings each allows; and import-model's one-line errors."""
from __future__ import annotations

import csv
import json
import textwrap

import numpy as np
import pytest
import torch

from sysarray import FaultMap
from sysarray.cli import main
from tests.clitools import run_cli

NET = textwrap.dedent('''
    from torch import nn


    def build(width=6, num_classes=3):
        """conv -> ReLU -> maxpool -> conv -> ReLU -> flatten -> linear for 1 x 12 x 12 images."""
        return nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(width * 6 * 6, num_classes),
        )
''')


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    """``(folder, checkpoint)``: net.py, data.npz (300 12x12 images, 3 classes: a bright band in the
    top, middle or bottom third) and the checkpoint import-model wrote after 2 epochs."""
    folder = tmp_path_factory.mktemp("own")
    (folder / "net.py").write_text(NET)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    x = rng.integers(0, 40, (300, 12, 12)).astype(np.uint8)
    for i, c in enumerate(y):
        x[i, 4 * c:4 * c + 4] += 200
    np.savez(folder / "data.npz", x=x, y=y, classes=np.array(["top", "middle", "bottom"]))
    ckpt = folder / "model.pt"
    code = main(["import-model", "--factory", f"{folder / 'net.py'}:build", "--kwargs", '{"width": 6}',
                 "--dataset", str(folder / "data.npz"), "--train-epochs", "2", "--batch-size", "16", "--quiet",
                 "-o", str(ckpt)])
    assert code == 0
    return folder, ckpt


def test_import_model_writes_a_checkpoint(own):
    from accel_models.checkpoint import read_checkpoint

    folder, ckpt = own
    meta = read_checkpoint(ckpt)
    assert meta["arch"]["factory"] == f"{folder / 'net.py'}:build" and meta["arch"]["kwargs"] == {"width": 6}
    assert meta["dataset"] == str(folder / "data.npz") and meta["classes"] == ["top", "middle", "bottom"]
    assert meta["test_accuracy"] > 0.9 and meta["preprocessing"]["source"] == "npz"


def test_run(own, tmp_path, capsys):
    _, ckpt = own
    code, out, err = run_cli(["run", "--model", ckpt, "--array", "8x8", "--limit", "30", "--rate", "0.1",
                              "--bits", "28-31", "--value", "1", "--json", tmp_path / "r.json"], capsys)
    assert code == 0, err
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["images"] == 30 and res["clean_accuracy"] > 0.9 and res["cycles"] > 0 and "fault-free" in out


def test_campaign(own, tmp_path, capsys):
    _, ckpt = own
    code, out, err = run_cli(["campaign", "--model", ckpt, "--limit", "20", "--array", "4x4", "--rates", "0,0.2",
                              "--chips-per-rate", "2", "--bits", "24-31", "--value", "1", "--workers", "1", "--quiet",
                              "-o", tmp_path / "c"], capsys)
    assert code == 0, err
    rows = list(csv.DictReader(open(tmp_path / "c" / "results.csv")))
    assert len(rows) == 4 and all(r["accuracy"] == rows[0]["accuracy"] for r in rows[:2])  # rate 0: fault-free


def test_sweep(own, tmp_path, capsys):
    _, ckpt = own
    code, out, err = run_cli(["sweep", "--model", ckpt, "--limit", "20", "--array", "8x8", "--bits", "30", "--value",
                              "1", "--pes-per-site", "2", "--workers", "1", "--quiet", "-o", tmp_path / "s"], capsys)
    assert code == 0, err
    rows = list(csv.DictReader(open(tmp_path / "s" / "results.csv")))
    assert len(rows) == 2 and {r["bit"] for r in rows} == {"30"}


def test_importance(own, tmp_path, capsys):
    _, ckpt = own
    code, out, err = run_cli(["importance", "--model", ckpt, "--limit", "20", "--array", "4x4", "--bits", "28-31",
                              "--value", "1", "--draws", "4", "--calibration-images", "16", "--workers", "1",
                              "--quiet", "-o", tmp_path / "i"], capsys)
    assert code == 0, err
    res = json.loads((tmp_path / "i" / "importance.json").read_text())
    assert res["importance"]["draws"] == 4 and res["uniform"]["draws"] == 4


def test_clip_then_run(own, tmp_path, capsys):
    _, ckpt = own
    clipped = tmp_path / "clipped.pt"
    code, out, err = run_cli(["clip", "--method", "ranger", "--model", ckpt, "--calibration-images", "32", "--quiet",
                              "-o", clipped], capsys)
    assert code == 0, err
    assert "2 thresholds" in out
    code, out, err = run_cli(["run", "--model", clipped, "--array", "4x4", "--limit", "20", "--json", tmp_path / "r.json"],
                             capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "r.json").read_text())["accuracy"] > 0.8


def test_fat_and_efat(own, tmp_path, capsys):
    _, ckpt = own
    chips = tmp_path / "chips"
    chips.mkdir()
    for i in range(2):
        FaultMap.random((4, 4), pe_rate=0.25, registers=("psum",), bits=range(20, 32), values=(1,), seed=i).save(
            chips / f"chip-{i}.npz")
    code, out, err = run_cli(["fat", "--model", ckpt, "--faults", chips / "chip-0.npz", "--array", "4x4", "--method", "fapt",
                              "--epochs", "0.2", "--limit", "20", "--quiet", "--json", tmp_path / "f.json",
                              "-o", tmp_path / "fat.pt"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "f.json").read_text())["method"] == "fapt" and (tmp_path / "fat.pt").is_file()
    code, out, err = run_cli(["efat", "--model", ckpt, "--faults-dir", chips, "--array", "4x4", "--max-drop", "0.5", "--bypass",
                              "--rates", "0,0.3", "--amounts", "0", "--maps-per-rate", "1", "--limit", "20", "--quiet",
                              "-o", tmp_path / "e"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "e" / "cost.json").read_text())["chips"] == 2
    assert len(list((tmp_path / "e" / "groups").glob("*.pt"))) >= 1


def test_import_model_with_weights(own, tmp_path, capsys):
    from accel_models.checkpoint import load_checkpoint

    folder, ckpt = own
    model, meta = load_checkpoint(ckpt)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    code, out, err = run_cli(["import-model", "--factory", f"{folder / 'net.py'}:build", "--kwargs", '{"width": 6}',
                              "--weights", tmp_path / "w.pt", "--dataset", folder / "data.npz", "-o", tmp_path / "m.pt"],
                             capsys)
    assert code == 0, err
    assert f"float test accuracy {meta['test_accuracy']:.4f} (weights from" in out and "3 chip layers" in out


@pytest.mark.parametrize("extra, message", [
    (["--kwargs", "{width: 6}"], "--kwargs must be a JSON object"),
    (["--kwargs", "[6]"], "--kwargs must be a JSON object"),
    (["--kwargs", '{"depth": 2}', "--train-epochs", "1"], "unexpected keyword argument 'depth'"),
    (["--kwargs", '{"num_classes": 4}', "--train-epochs", "1"], "to N x 3 logits. Got output (2, 4)"),
    ([], "needs weights (--weights STATE_DICT.pt) or training (--train-epochs N > 0)"),
    (["--train-epochs", "-1"], "argument --train-epochs: must be a non-negative integer. Got '-1'"),
    (["--weights", "missing.pt"], "Weights file not found: missing.pt"),
])
def test_import_model_bad_input_is_one_line(own, tmp_path, capsys, monkeypatch, extra, message):
    folder, _ = own
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["import-model", "--factory", f"{folder / 'net.py'}:build", "--dataset", folder / "data.npz",
                              "-o", tmp_path / "m.pt", *extra], capsys)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("factory, message", [
    ("nowhere.py:build", "nowhere.py does not exist"),
    ("build", "must be 'package.module:callable' or 'path/to/file.py:callable'. Got 'build'"),
    ("no_such_package_xyz:build", "no module named 'no_such_package_xyz'"),
])
def test_import_model_bad_factory(own, tmp_path, capsys, factory, message):
    folder, _ = own
    code, out, err = run_cli(["import-model", "--factory", factory, "--dataset", folder / "data.npz", "--train-epochs", "1",
                              "-o", tmp_path / "m.pt"], capsys)
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_import_model_refuses_a_model_the_chip_cannot_run(own, tmp_path, capsys):
    folder, _ = own
    (tmp_path / "branchy.py").write_text(textwrap.dedent('''
        from torch import nn


        class Branchy(nn.Module):
            """A forward that branches on the data: torch.fx cannot trace it, so it cannot be lowered."""

            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(144, 3)

            def forward(self, x):
                if x.mean() > 0.5:
                    x = 1 - x
                return self.fc(x.flatten(1))
    '''))
    code, out, err = run_cli(["import-model", "--factory", f"{tmp_path / 'branchy.py'}:Branchy", "--dataset",
                              folder / "data.npz", "--train-epochs", "1", "-o", tmp_path / "m.pt"], capsys)
    last = err.strip().splitlines()[-1]  # the tracer may log before the one-line error
    assert code == 2 and last.startswith("sysarray: error:") and "Branchy" in last, err
    assert not (tmp_path / "m.pt").exists()
