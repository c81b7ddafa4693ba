"""The trainer (seeded, cosine schedule) and self-describing checkpoints."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from accel_models.checkpoint import (
    FORMAT,
    CheckpointError,
    CheckpointNotFoundError,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from accel_models.train import evaluate, predict, random_crop, random_flip, train, train_zoo_model
from accel_models.zoo import build_model


@pytest.fixture(autouse=True)
def _own_rng():
    """Each test's torch RNG draws leave the global state as they found it."""
    with torch.random.fork_rng(devices=[]):
        yield


def _blobs(n=120, shape=(1, 8, 8), classes=3, seed=0):
    """A tiny separable synthetic dataset: class k lights up its own band of rows."""
    g = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = g.uniform(0, 0.3, size=(n, *shape)).astype(np.float32)
    band = shape[1] // classes
    for k in range(classes):
        x[y == k, :, k * band : (k + 1) * band, :] += 0.6
    return np.clip(x, 0, 1), y.astype(np.int64)


def _model(name="lenet5", seed=0, shape=(1, 8, 8), classes=3, **kw):
    torch.manual_seed(seed)
    return build_model(name, shape, classes, **kw)


# --------------------------------------------------------------------------- trainer
@pytest.mark.parametrize("name", ["lenet5", "resnet20"])
def test_same_seed_same_weights(name):
    x, y = _blobs()
    runs = []
    for _ in range(2):
        model = _model(name, base_width=4) if name == "resnet20" else _model(name, dropout=0.2)
        hist = train(model, x, y, epochs=2, batch_size=16, seed=7, progress=False, augment="crop")
        runs.append((model.state_dict(), hist))
    (a, ha), (b, hb) = runs
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert ha["train_loss"] == hb["train_loss"]

    other = _model(name, base_width=4) if name == "resnet20" else _model(name, dropout=0.2)
    train(other, x, y, epochs=2, batch_size=16, seed=8, progress=False, augment="crop")
    c = other.state_dict()
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_the_optimizers_multi_tensor_steps_give_the_per_tensor_loops_weights(monkeypatch, optimizer):
    """train() steps its optimizer over all tensors at once (foreach), which must give the same
    weights as torch's CPU default, a loop over the tensors."""
    x, y = _blobs()
    runs = []
    for foreach in (True, False):
        if not foreach:
            for name in ("Adam", "SGD"):
                made = getattr(torch.optim, name)
                monkeypatch.setattr(torch.optim, name, lambda *a, _made=made, **k: _made(*a, **{**k, "foreach": False}))
        model = _model("lenet5")
        train(model, x, y, epochs=2, batch_size=16, seed=7, progress=False, optimizer=optimizer)
        runs.append(model.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_train_leaves_global_rng_alone():
    x, y = _blobs()
    model = _model(dropout=0.5)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train(model, x, y, epochs=1, progress=False)
    assert torch.equal(torch.rand(3), expected)


def test_history_and_cosine_schedule():
    x, y = _blobs()
    model = _model()
    hist = train(model, x[:90], y[:90], epochs=15, batch_size=16, optimizer="sgd", seed=0,
                 progress=False, val=(x[90:], y[90:]))
    s = hist["settings"]
    assert s["optimizer"] == "sgd" and s["lr"] == 0.05 and s["weight_decay"] == 5e-4 and s["schedule"] == "cosine"
    assert len(hist["train_loss"]) == len(hist["train_accuracy"]) == len(hist["val_accuracy"]) == len(hist["lr"]) == 15
    lrs = hist["lr"]
    assert all(a >= b for a, b in zip(lrs, lrs[1:])) and lrs[-1] == pytest.approx(0.0, abs=1e-12)
    assert lrs[7] == pytest.approx(0.05 * 0.5 * (1 + np.cos(np.pi * 48 / 90)), rel=1e-6)  # after 8 epochs of 6 steps
    assert hist["train_loss"][-1] < hist["train_loss"][0]
    assert hist["final_val_accuracy"] == hist["val_accuracy"][-1] == 1.0
    assert evaluate(model, x, y) == 1.0
    assert not model.training and hist["train_time_s"] > 0


def test_adam_defaults_and_overrides():
    x, y = _blobs(n=40)
    hist = train(_model("mlp"), x, y, epochs=1, progress=False)
    assert hist["settings"]["optimizer"] == "adam" and hist["settings"]["lr"] == 3e-3
    assert hist["settings"]["weight_decay"] == 0.0 and hist["final_val_accuracy"] is None
    hist = train(_model("mlp"), torch.from_numpy(x), torch.from_numpy(y), epochs=1, lr=0.01, weight_decay=1e-4, progress=False)
    assert hist["settings"]["lr"] == 0.01 and hist["settings"]["weight_decay"] == 1e-4


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"epochs": 0}, ValueError, "'epochs' argument of train must be a positive integer"),
        ({"epochs": 1, "batch_size": 0}, ValueError, "'batch_size'"),
        ({"epochs": 1, "optimizer": "rmsprop"}, ValueError, "must be one of adam, sgd. Got 'rmsprop'"),
        ({"epochs": 1, "lr": -1.0}, ValueError, "'lr'"),
        ({"epochs": 1, "augment": "rotate"}, ValueError, "crop, flip, crop\\+flip. Got 'rotate'"),
    ],
)
def test_train_rejects_bad_arguments(kwargs, exc, match):
    x, y = _blobs(n=20)
    with pytest.raises(exc, match=match):
        train(_model(), x, y, progress=False, **kwargs)


def test_train_rejects_bad_data():
    x, y = _blobs(n=20)
    with pytest.raises(ValueError, match="1-d array of 20 labels"):
        train(_model(), x, y[:10], epochs=1, progress=False)
    with pytest.raises(ValueError, match="4-d array"):
        train(_model(), x[:, 0], y, epochs=1, progress=False)
    with pytest.raises(TypeError, match="integer class indices"):
        train(_model(), x, y.astype(np.float32), epochs=1, progress=False)
    with pytest.raises(TypeError, match="must hold floats"):
        train(_model(), (x * 255).astype(np.uint8), y, epochs=1, progress=False)


def test_augmentations():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 2, 8, 8)
    assert torch.equal(random_crop(x, g, padding=0), x)
    crop = random_crop(x, torch.Generator().manual_seed(1))
    assert crop.shape == x.shape
    assert torch.equal(crop, random_crop(x, torch.Generator().manual_seed(1)))
    # each crop is a shifted window of the zero-padded image
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    for i in range(16):
        assert any(torch.equal(crop[i], padded[i, :, a : a + 8, b : b + 8]) for a in range(3) for b in range(3))
    flip = random_flip(x, torch.Generator().manual_seed(2))
    mirrored = [torch.equal(flip[i], x[i].flip(2)) for i in range(16)]
    kept = [torch.equal(flip[i], x[i]) for i in range(16)]
    assert all(m or k for m, k in zip(mirrored, kept)) and any(mirrored) and any(kept)


def test_evaluate_and_predict_keep_mode():
    x, y = _blobs(n=30)
    model = _model().train()
    logits = predict(model, x, batch_size=7)
    assert logits.shape == (30, 3) and model.training
    assert evaluate(model, x, y, batch_size=7) == pytest.approx(float((logits.argmax(1) == torch.from_numpy(y)).double().mean()))
    assert model.training


# --------------------------------------------------------------------------- on the real digits
@pytest.fixture(scope="module")
def digits():
    data = pytest.importorskip("accel_models.data")
    return data.load_dataset("digits")


@pytest.mark.parametrize("name, epochs, target", [("lenet5", 30, 0.95), ("mlp", 30, 0.93)])
def test_digits_accuracy(digits, name, epochs, target):
    # Speed is a benchmark's business: a time bound here would depend on how loaded the machine is.
    model, hist = train_zoo_model(name, digits, epochs, 0, progress=False)
    assert hist["test_accuracy"] >= target, hist["test_accuracy"]
    assert hist["dataset"] == "digits" and hist["model"] == model.arch
    assert evaluate(model, digits.test_x, digits.test_y) == hist["test_accuracy"]


def test_train_zoo_model_validation_split(digits):
    model, hist = train_zoo_model("mlp", digits, 2, 3, val_fraction=0.1, progress=False, batch_size=128)
    assert len(hist["val_accuracy"]) == 2 and hist["settings"]["train_size"] == len(digits.train_x) - round(0.1 * len(digits.train_x))
    assert hist["settings"]["seed"] == 3 and hist["settings"]["val_fraction"] == 0.1


# --------------------------------------------------------------------------- checkpoints
class _FakeDataset:
    name = "blobs"
    input_shape = (1, 8, 8)
    num_classes = 3
    classes = ("a", "b", "c")
    preprocessing = {"scale": "x/1", "split": (0.8, 0.2)}


@pytest.mark.parametrize("name", ["lenet5", "resnet20", "vgg11"])
def test_checkpoint_round_trip(tmp_path, name):
    x, y = _blobs(n=48)
    model = _model(name)
    hist = train(model, x, y, epochs=1, batch_size=16, progress=False)
    hist["test_accuracy"] = 0.5
    path = save_checkpoint(tmp_path / "sub" / "m.pt", model, dataset=_FakeDataset(), history=hist,
                           extra={"clip": {"thresholds": np.array([1.5, 2.0], dtype=np.float32), "n": np.int64(3)}})
    assert os.listdir(tmp_path / "sub") == ["m.pt"]  # the temporary file is gone
    with pytest.raises(ValueError, match="'path' argument of save_checkpoint must be a file"):
        save_checkpoint(tmp_path / "sub", model, dataset=_FakeDataset(), history=hist)  # refused before any work
    loaded, meta = load_checkpoint(path)
    assert not loaded.training and type(loaded) is type(model) and loaded.arch == model.arch
    model.eval()
    xt = torch.from_numpy(x)
    assert torch.equal(loaded(xt), model(xt))
    assert meta["format"] == FORMAT and meta["version"] == 1 and meta["package_version"]
    assert meta["dataset"] == "blobs" and meta["input_shape"] == [1, 8, 8] and meta["num_classes"] == 3
    assert meta["classes"] == ["a", "b", "c"] and meta["preprocessing"] == {"scale": "x/1", "split": [0.8, 0.2]}
    assert meta["test_accuracy"] == 0.5 and meta["training"]["train_loss"] == hist["train_loss"]
    assert torch.equal(meta["extra"]["clip"]["thresholds"], torch.tensor([1.5, 2.0])) and meta["extra"]["clip"]["n"] == 3
    assert meta["path"] == str(path) and "state_dict" not in meta
    # the raw file is a plain dict that torch loads with weights_only=True
    raw = torch.load(path, weights_only=True)
    assert raw["arch"]["name"] == name and set(raw["state_dict"]) == set(model.state_dict())


def test_checkpoint_with_dataset_name_and_real_dataset(tmp_path, digits):
    model = _model("mlp", shape=(1, 8, 8), classes=10)
    save_checkpoint(tmp_path / "a.pt", model, dataset="digits", preprocessing={"scale": "x/16"})
    _, meta = load_checkpoint(tmp_path / "a.pt")
    assert meta["classes"] == [str(i) for i in range(10)] and meta["preprocessing"] == {"scale": "x/16"}
    assert meta["test_accuracy"] is None and meta["training"] == {} and meta["extra"] == {}
    save_checkpoint(tmp_path / "b.pt", model, dataset=digits, preprocessing=digits.preprocessing)
    _, meta = load_checkpoint(tmp_path / "b.pt")
    assert meta["dataset"] == "digits" and meta["preprocessing"]["scale"] == digits.preprocessing["scale"]
    with pytest.raises(ValueError, match="built for inputs"):
        save_checkpoint(tmp_path / "c.pt", _model("mlp"), dataset=digits)


def test_save_rejects_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="zoo model built by"):
        save_checkpoint(tmp_path / "x.pt", torch.nn.Linear(2, 2), dataset="digits")
    with pytest.raises(TypeError, match=r"extra\['f'\] must hold only tensors"):
        save_checkpoint(tmp_path / "x.pt", _model(), dataset="digits", extra={"f": lambda: 0})
    with pytest.raises(TypeError, match="Dataset or a dataset name"):
        save_checkpoint(tmp_path / "x.pt", _model(), dataset=3)
    assert os.listdir(tmp_path) == []


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="does not exist; train one with `sysarray train") as exc:
        load_checkpoint(tmp_path / "nope.pt")
    assert isinstance(exc.value, FileNotFoundError) and isinstance(exc.value, ValueError)


@pytest.mark.parametrize("content", [b"", b"hello, not a checkpoint\n", b"PK\x03\x04garbage"])
def test_not_a_torch_file(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="is not a torch file"):
        load_checkpoint(path)


@pytest.mark.parametrize("obj", [{"weights": torch.zeros(2)}, [1, 2], {"format": "other"}])
def test_torch_file_that_is_not_a_checkpoint(tmp_path, obj):
    path = tmp_path / "other.pt"
    torch.save(obj, path)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    assert str(exc.value) == (
        f"'{path}' is not a sysarray checkpoint (no 'format': 'sysarray-checkpoint' key); "
        "train one with `sysarray train`."
    )


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_checkpoint_with_python_objects_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "payload": _Evil()}, path)
    with pytest.raises(CheckpointError, match="holds Python objects other than tensors"):
        load_checkpoint(path)
    path.write_bytes(pickle.dumps({"format": FORMAT}))  # a plain pickle, not torch's zip format
    with pytest.raises(CheckpointError, match="not a torch file|not a sysarray checkpoint"):
        load_checkpoint(path)


def _edit(tmp_path, **changes):
    path = save_checkpoint(tmp_path / "m.pt", _model(), dataset=_FakeDataset())
    ckpt = torch.load(path, weights_only=True)
    ckpt.update(changes)
    torch.save(ckpt, path)
    return path, ckpt


def test_unsupported_version(tmp_path):
    path, _ = _edit(tmp_path, version=2)
    with pytest.raises(CheckpointError, match="has format version 2.*reads version 1"):
        load_checkpoint(path)


def test_unknown_architecture(tmp_path):
    path, ckpt = _edit(tmp_path)
    ckpt["arch"]["name"] = "transformer"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="architecture 'transformer'.*Known models: alexnet, lenet5, mlp, .*resnet20, vgg11"):
        load_checkpoint(path)
    assert read_checkpoint(path)["arch"]["name"] == "transformer"  # the raw read still works


def test_damaged_checkpoints(tmp_path):
    path, ckpt = _edit(tmp_path)
    ckpt["state_dict"].pop("classifier.1.weight")
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load_checkpoint(path)
    del ckpt["state_dict"]
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="lacks the key\\(s\\) state_dict"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="is not a file"):
        load_checkpoint(tmp_path)
