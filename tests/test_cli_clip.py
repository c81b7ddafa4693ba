"""`sysarray clip`: a clipped checkpoint that `sysarray run` accepts unchanged, and one-line errors."""
from __future__ import annotations

import json

import pytest

from sysarray.cli import main


@pytest.fixture(scope="module")
def lenet_ckpt(tmp_path_factory):
    from accel_models.checkpoint import save_checkpoint
    from accel_models.data import load_dataset
    from accel_models.train import train_zoo_model

    data = load_dataset("digits")
    model, history = train_zoo_model("lenet5", data, 3, 0, progress=False)
    path = tmp_path_factory.mktemp("cli-clip") / "lenet.pt"
    save_checkpoint(path, model, dataset=data, history=history, extra={"calibration": {"images": 512}})
    return str(path)


def test_clip_then_run(lenet_ckpt, tmp_path, capsys):
    out = tmp_path / "ranger.pt"
    assert main(["clip", "--method", "ranger", "--model", lenet_ckpt, "-o", str(out), "--quiet",
                 "--json", str(tmp_path / "c.json")]) == 0
    text = capsys.readouterr().out
    assert "4 thresholds" in text and "% of the model's" in text and "found in" in text
    summary = json.loads((tmp_path / "c.json").read_text())
    assert summary["thresholds"] == 4 and 0 < summary["overhead"] < 1e-3
    assert main(["run", "--model", str(out), "--limit", "50", "--dataflow", "os", "--rate", "0.01",
                 "--bits", "24-30", "--value", "1", "--json", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["images"] == 50
    # the thresholds of a clipped checkpoint can be reused for the same architecture
    assert main(["clip", "--model", lenet_ckpt, "--thresholds", str(out), "-o", str(tmp_path / "again.pt")]) == 0


def test_ftclipact_searches_on_float32_weight_memory(lenet_ckpt, tmp_path, capsys):
    from accel_models.checkpoint import read_checkpoint

    out = tmp_path / "ft32.pt"
    assert main(["clip", "--method", "ftclipact", "--model", lenet_ckpt, "-o", str(out), "--quiet", "--weight-format",
                 "float32", "--rates", "1e-4", "--repetitions", "1", "--calibration-images", "64", "--clean-drop", "1"]) == 0
    assert "4 thresholds" in capsys.readouterr().out
    settings = read_checkpoint(out)["extra"]["clipping"]["settings"]
    faults = settings["faults"]
    assert settings["clean_drop"] == 1.0
    assert faults["site"] == "memory" and faults["weight_format"] == "float32" and faults["rates"] == [1e-4]


def _one_line_error(capsys, argv, match):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err and "Traceback" not in err


def test_bad_input_is_one_line_exit_2(lenet_ckpt, tmp_path, capsys):
    out = str(tmp_path / "x.pt")
    _one_line_error(capsys, ["clip", "--method", "bogus", "--model", lenet_ckpt, "-o", out], "invalid choice: 'bogus'")
    _one_line_error(capsys, ["clip", "--model", lenet_ckpt, "-o", out], "--method")
    _one_line_error(capsys, ["clip", "--method", "ranger", "--model", lenet_ckpt, "-o", out, "--epochs", "2"],
                    "does not take --epochs")
    _one_line_error(capsys, ["clip", "--method", "ftclipact", "--model", lenet_ckpt, "-o", out, "--rates", "a,b"], "--rates")
    _one_line_error(capsys, ["clip", "--method", "ranger", "--model", lenet_ckpt, "-o", out, "--clean-drop", "1"],
                    "does not take --clean-drop")
    _one_line_error(capsys, ["clip", "--method", "ftclipact", "--model", lenet_ckpt, "-o", out, "--clean-drop", "-1"],
                    "argument --clean-drop: must be a non-negative number or inf. Got '-1'")
    _one_line_error(capsys, ["clip", "--method", "ftclipact", "--model", lenet_ckpt, "-o", out, "--weight-format", "fp16"],
                    "invalid choice: 'fp16'")
    _one_line_error(capsys, ["clip", "--method", "ftclipact", "--model", lenet_ckpt, "-o", out, "--site", "chip",
                             "--weight-format", "float32"], "--site memory only")
    _one_line_error(capsys, ["clip", "--model", lenet_ckpt, "--thresholds", str(tmp_path / "none.pt"), "-o", out], "not found")
    # thresholds found for another architecture
    from accel_models.checkpoint import save_checkpoint
    from accel_models.data import load_dataset
    from accel_models.zoo import build_model

    mlp = str(tmp_path / "mlp.pt")
    save_checkpoint(mlp, build_model("mlp", (1, 8, 8), 10), dataset=load_dataset("digits"))
    assert main(["clip", "--method", "ranger", "--model", mlp, "-o", str(tmp_path / "mlp-r.pt"), "--quiet"]) == 0
    capsys.readouterr()
    _one_line_error(capsys, ["clip", "--model", lenet_ckpt, "--thresholds", str(tmp_path / "mlp-r.pt"), "-o", out], "mlp")
