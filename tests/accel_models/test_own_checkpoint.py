"""Checkpoints of a user's own model: a factory (a .py file or a module) rebuilds it; what is
checked on save and on load; ``import_model``."""
from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest
import torch

from accel_models.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from accel_models.data import Dataset
from accel_models.own_model import build_from_arch, import_model, load_factory, read_state_dict

NETS = textwrap.dedent('''
    import torch
    from torch import nn


    class Net(nn.Module):
        """conv -> ReLU -> maxpool -> flatten -> linear on 1 x 4 x 4 images."""

        def __init__(self, width=4, num_classes=3):
            super().__init__()
            self.conv = nn.Conv2d(1, width, 3, padding=1)
            self.relu = nn.ReLU()
            self.pool = nn.MaxPool2d(2)
            self.fc = nn.Linear(width * 4, num_classes)

        def forward(self, x):
            return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


    def build(width=4, num_classes=3, sizes=(1, 2)):
        return Net(width, num_classes)


    def boom(**kwargs):
        raise RuntimeError("boom")


    def not_a_model():
        return 42
''')


@pytest.fixture
def nets(tmp_path):
    path = tmp_path / "nets.py"
    path.write_text(NETS)
    return path


@pytest.fixture(scope="module")
def data():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(40, 1, 4, 4, generator=gen)
    y = torch.arange(40) % 3
    return Dataset(name="tiny", train_x=x[:30], train_y=y[:30], test_x=x[30:], test_y=y[30:], num_classes=3,
                   input_shape=(1, 4, 4), classes=("a", "b", "c"), preprocessing={"scale": "none"})


def _model(nets, **kwargs):
    return build_from_arch({"name": "t", "factory": f"{nets}:build", "kwargs": kwargs, "input_shape": [1, 4, 4],
                            "num_classes": 3})


def test_file_factory_round_trip(nets, data, tmp_path, monkeypatch):
    model = _model(nets, width=5)
    monkeypatch.chdir(nets.parent)  # a relative file path is recorded as an absolute one
    path = save_checkpoint(tmp_path / "m.pt", model, dataset=data, factory="nets.py:build",
                           factory_kwargs={"width": 5, "sizes": (1, 2)})
    raw = torch.load(path, weights_only=True)  # still a plain dict of tensors and plain types
    spec = f"{nets.resolve()}:build"
    assert raw["arch"] == {"name": spec, "factory": spec, "kwargs": {"width": 5, "sizes": [1, 2]},
                           "input_shape": [1, 4, 4], "num_classes": 3}
    loaded, meta = load_checkpoint(path)
    assert type(loaded).__name__ == "Net" and not loaded.training and loaded.arch == raw["arch"]
    assert torch.equal(loaded(data.test_x), model.eval()(data.test_x))
    assert meta["dataset"] == "tiny" and meta["classes"] == ["a", "b", "c"]
    again = save_checkpoint(tmp_path / "again.pt", loaded, dataset=data)  # as fat and clip re-save it: no factory needed
    assert read_checkpoint(again)["arch"] == raw["arch"]


def test_module_factory_and_own_class(nets, data, tmp_path, monkeypatch):
    pkg = tmp_path / "ownpkg_ckpt"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    nets.rename(pkg / "nets.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "ownpkg_ckpt", raising=False)
    from ownpkg_ckpt.nets import Net, build

    path = save_checkpoint(tmp_path / "a.pt", build(), dataset=data, factory="ownpkg_ckpt.nets:build")
    assert load_checkpoint(path)[1]["arch"]["factory"] == "ownpkg_ckpt.nets:build"
    path = save_checkpoint(tmp_path / "b.pt", Net(), dataset=data)  # its class is the factory
    model, meta = load_checkpoint(path)
    assert meta["arch"]["factory"] == "ownpkg_ckpt.nets:Net" and meta["arch"]["kwargs"] == {} and isinstance(model, Net)
    with pytest.raises(ValueError, match="zoo model built by accel_models.zoo.build_model, a model loaded from a checkpoint"):
        save_checkpoint(tmp_path / "c.pt", torch.nn.Linear(16, 3), dataset=data)  # needs arguments
    with pytest.raises(TypeError, match="must be a Dataset for a model built by a factory"):
        save_checkpoint(tmp_path / "c.pt", Net(), dataset="tiny")


def test_missing_factory(nets, data, tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "m.pt", _model(nets), dataset=data, factory=f"{nets}:build")
    nets.rename(tmp_path / "elsewhere.py")
    with pytest.raises(CheckpointError, match=rf"Checkpoint '{path}' cannot rebuild .*cannot be imported: {nets} does not exist"):
        load_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    for factory, message in [("no_such_pkg.nets:build", "no module named 'no_such_pkg'"),
                             (f"{tmp_path / 'elsewhere.py'}:nothing", "has no attribute 'nothing'"),
                             (f"{tmp_path / 'elsewhere.py'}:not_a_model", "must return a torch.nn.Module. Got int"),
                             (f"{tmp_path / 'elsewhere.py'}:torch", "must name a Python function or an nn.Module class"),
                             ("subprocess:run", "must be your own code. Got the module 'subprocess'"),
                             ("os.path:join", "standard-library")]:
        ckpt["arch"]["factory"] = factory
        torch.save(ckpt, path)
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(path)
    ckpt["arch"]["factory"] = "no colon here"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="is damaged: The 'factory' argument of the checkpoint's arch must be "
                                              "'package.module:callable' or 'path/to/file.py:callable'"):
        read_checkpoint(path)
    (tmp_path / "broken.py").write_text("import torch\nraise ImportError('a missing dependency')\n")
    with pytest.raises(ValueError, match=r"Running the model factory file .*broken.py failed: ImportError: a missing dependency"):
        load_factory(f"{tmp_path / 'broken.py'}:build")


def test_factory_raising(nets, data, tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", _model(nets), dataset=data, factory=f"{nets}:build")
    ckpt = torch.load(path, weights_only=True)
    ckpt["arch"]["factory"] = f"{nets}:boom"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"The model factory '.*:boom' raised RuntimeError: boom when called with kwargs \{\}"):
        load_checkpoint(path)
    ckpt["arch"]["factory"] = f"{nets}:build"
    ckpt["arch"]["kwargs"] = {"depth": 3}
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="raised TypeError: build\\(\\) got an unexpected keyword argument 'depth'"):
        load_checkpoint(path)


@pytest.mark.parametrize("kwargs", [{"width": object()}, {"width": float("nan")}, {3: 4}, {"t": torch.ones(2)}, [1, 2]])
def test_kwargs_not_json(nets, data, tmp_path, kwargs):
    with pytest.raises(TypeError, match="The 'kwargs' argument of save_checkpoint must be a JSON object"):
        save_checkpoint(tmp_path / "m.pt", _model(nets), dataset=data, factory=f"{nets}:build", factory_kwargs=kwargs)
    path = save_checkpoint(tmp_path / "m.pt", _model(nets), dataset=data, factory=f"{nets}:build")
    ckpt = torch.load(path, weights_only=True)
    ckpt["arch"]["kwargs"] = {"t": torch.ones(2)}  # a tensor loads with weights_only=True but is no JSON
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="is damaged: The 'kwargs' argument of the checkpoint's arch must be a JSON object"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match="'factory_kwargs' argument of save_checkpoint needs 'factory'"):
        save_checkpoint(tmp_path / "m.pt", _model(nets), dataset=data, factory_kwargs={"width": 4})


def test_wrong_output_shape_and_weights(nets, data, tmp_path):
    with pytest.raises(ValueError, match=r"must map N x 1 x 4 x 4 images to N x 3 logits. Got output \(2, 4\)"):
        save_checkpoint(tmp_path / "m.pt", _model(nets, num_classes=4), dataset=data, factory=f"{nets}:build",
                        factory_kwargs={"num_classes": 4})
    with pytest.raises(ValueError, match=r"builds a model whose weights differ .*other shapes: conv.weight \(6, 1, 3, 3\) \(expected \(4, 1, 3, 3\)\)"):
        save_checkpoint(tmp_path / "m.pt", _model(nets, width=6), dataset=data, factory=f"{nets}:build")
    path = save_checkpoint(tmp_path / "m.pt", _model(nets), dataset=data, factory=f"{nets}:build")
    ckpt = torch.load(path, weights_only=True)
    ckpt["arch"]["num_classes"] = ckpt["num_classes"] = 4  # a checkpoint edited to claim 4 classes
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"must map N x 1 x 4 x 4 images to N x 4 logits. Got output \(2, 3\)"):
        load_checkpoint(path)
    ckpt["arch"]["input_shape"] = [1, 6, 6]
    ckpt["arch"]["num_classes"] = 3
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="fails on a 2 x 1 x 6 x 6 batch: RuntimeError"):
        load_checkpoint(path)


def test_import_model(nets, data, tmp_path):
    res = import_model(tmp_path / "t.pt", f"{nets}:build", data, kwargs={"width": 3}, train_epochs=2, seed=1,
                       batch_size=8)
    model, meta = load_checkpoint(res.path)
    assert res.chip_layers == 2 and meta["test_accuracy"] == res.test_accuracy and meta["extra"]["calibration"]["images"] == 512
    assert meta["training"]["settings"]["epochs"] == 2 and meta["training"]["source"]["seed"] == 1
    again = import_model(tmp_path / "t2.pt", f"{nets}:build", data, kwargs={"width": 3}, train_epochs=2, seed=1,
                         batch_size=8)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.model.state_dict().values()))
    torch.save(model.state_dict(), tmp_path / "w.pt")
    res = import_model(tmp_path / "w-model.pt", f"{nets}:build", data, kwargs={"width": 3}, weights=tmp_path / "w.pt")
    assert res.test_accuracy == meta["test_accuracy"] and res.history["source"]["train_epochs"] == 0
    assert torch.equal(read_state_dict(res.path)["fc.weight"], model.state_dict()["fc.weight"])  # a checkpoint is a state dict too
    with pytest.raises(ValueError, match="import_model needs weights .* or training"):
        import_model(tmp_path / "x.pt", f"{nets}:build", data)
    with pytest.raises(ValueError, match=r"The weights in .*w.pt do not fit the model built by .*: other shapes: conv.weight"):
        import_model(tmp_path / "x.pt", f"{nets}:build", data, weights=tmp_path / "w.pt")
    np.save(tmp_path / "junk.npy", np.zeros(3))
    with pytest.raises(ValueError, match="must be a state dict saved with torch.save"):
        import_model(tmp_path / "x.pt", f"{nets}:build", data, kwargs={"width": 3}, weights=tmp_path / "junk.npy")
