"""`sysarray train` and `sysarray run` end to end, and their one-line errors (exit 2)."""
from __future__ import annotations

import json

import pytest
import torch

import sysarray as sa
from sysarray.cli import main
from tests.clitools import run_cli


@pytest.fixture(scope="module")
def mlp_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "mlp.pt"
    assert main(["train", "--arch", "mlp", "--dataset", "digits", "--epochs", "3", "--seed", "0",
                 "--quiet", "-o", str(path)]) == 0
    return path


def test_run_prints_and_writes_json(mlp_checkpoint, tmp_path, capsys):
    js = tmp_path / "r.json"
    code, out, err = run_cli(["run", "--model", str(mlp_checkpoint), "--array", "8x8", "--limit", "50",
                              "--json", str(js)], capsys)
    assert code == 0, err
    assert "accuracy" in out and "cycles" in out
    res = json.loads(js.read_text())
    assert 0.0 <= res["accuracy"] <= 1.0 and res["cycles"] > 0 and res["overall_util"] > 0
    assert "clean_accuracy" not in res


def test_run_with_faults_reports_clean_accuracy(mlp_checkpoint, tmp_path, capsys):
    js = tmp_path / "r.json"
    chip = ["--rate", "0.1", "--register", "psum", "--bits", "28-31", "--value", "1", "--seed", "1"]
    code, out, err = run_cli(["run", "--model", str(mlp_checkpoint), "--array", "8x8", "--limit", "60", *chip,
                              "--json", str(js)], capsys)
    assert code == 0, err
    res = json.loads(js.read_text())
    assert res["clean_accuracy"] > res["accuracy"]
    assert "fault-free" in out
    # The same options and seed give chip 0 of `faults generate`; run on that file, which sets the array size.
    assert main(["faults", "generate", "--array", "8x8", *chip, "--chips", "1", "-o", str(tmp_path / "chips")]) == 0
    js2 = tmp_path / "r2.json"
    assert main(["run", "--model", str(mlp_checkpoint), "--limit", "60", "--faults",
                 str(tmp_path / "chips" / "chip-0000.npz"), "--json", str(js2)]) == 0
    res2 = json.loads(js2.read_text())
    assert res2["accuracy"] == res["accuracy"] and (res2["array"]["rows"], res2["array"]["cols"]) == (8, 8)


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--arch", "lenet7", "-o", "x.pt"], "Unknown model 'lenet7'. Known models:"),
        (["train", "--arch", "mlp", "--dataset", "imagenet", "-o", "x.pt"], "Unknown dataset"),
        (["train", "-o", "x.pt"], "the following argument is required: --arch"),
        (["train", "--arch", "mlp", "--epochs", "0", "-o", "x.pt"], "argument --epochs: must be a positive integer"),
        (["run", "--model", "missing.pt"], "missing.pt"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(args, capsys)
    assert code == 2
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_checkpoint_from_something_else(tmp_path, capsys):
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    code, _, err = run_cli(["run", "--model", str(other)], capsys)
    assert code == 2 and "not a sysarray checkpoint" in err and err.count("\n") == 1


def test_dataset_of_another_shape(mlp_checkpoint, capsys, tmp_path):
    # A CIFAR-style directory the model cannot take (3x32x32 vs 1x8x8).
    import pickle

    import numpy as np

    d = tmp_path / "cifar"
    d.mkdir()
    batch = {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 3]}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(d / name, "wb") as f:
            pickle.dump(batch, f)
    code, _, err = run_cli(["run", "--model", str(mlp_checkpoint), "--dataset", "cifar10", "--data-dir", str(d)], capsys)
    assert code == 2 and "takes 1x8x8 inputs but dataset 'cifar10' has 3x32x32 images" in err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--faults", "chip.npz", "--rate", "0.1"], "not both"),
        (["--rate", "1.5"], "argument --rate: must be a number within [0, 1]. Got '1.5' instead"),
        (["--rate", "0.1", "--register", "accumulator"], "register"),
        (["--rate", "0.1", "--bits", "30-40"], "bits"),
        (["--rate", "0.001"], "--rate 0.001 places no faulty PE on a 16x16 array"),
        (["--fault-model", "ber"], "--fault-model ber draws a random map at --rate R; give --rate"),
        (["--psum-bits", "12"], "argument --psum-bits: must be an integer within 17..32. Got '12' instead"),
        (["--device", "gpu"], "argument --device: invalid choice: 'gpu'"),
        (["--array", "16by16"], "ROWSxCOLS"),
        (["--limit", "0"], "limit"),
    ],
)
def test_bad_chip_arguments(mlp_checkpoint, extra, message, capsys):
    code, _, err = run_cli(["run", "--model", str(mlp_checkpoint)] + extra, capsys)
    assert code == 2, err
    assert message in err and err.count("\n") == 1
