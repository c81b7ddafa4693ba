"""A user's own model: a checkpoint whose architecture is a factory, and ``import_model`` (docs/own-models.md).

A checkpoint's ``arch`` names a zoo builder or, for a user's own network, a **factory**::

    {"name": FACTORY, "factory": FACTORY, "kwargs": {...}, "input_shape": [C, H, W], "num_classes": K}

``FACTORY`` is ``"package.module:callable"`` (imported by name, so it must be on ``sys.path``) or
``"/abs/path/file.py:callable"`` (the file is run as a module of its own, its folder first on
``sys.path`` while it loads, so it can import modules beside it); ``callable`` may be dotted
(``module:Class.method``). ``load_checkpoint`` imports it and calls ``callable(**kwargs)``, which
must return a ``torch.nn.Module`` that maps ``N x C x H x W`` images to ``N x K`` logits; then it
loads the saved weights. ``kwargs`` are JSON (str keys; None, bool, int, float, str, lists and dicts
of them; tuples are stored as lists).

Security: the checkpoint file itself still loads with ``torch.load(weights_only=True)``, but
rebuilding the model runs the factory's code, so a checkpoint with a factory is as trusted as a
script. Standard-library modules are refused as factories (``subprocess:run`` is no model), and
the callable must be a function or an ``nn.Module`` class; beyond that, load only checkpoints whose
factory you trust (``read_checkpoint`` shows it without importing anything).
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from sysarray.validation import check_instance, check_int, check_output_path, check_seed

if TYPE_CHECKING:
    from accel_models.data import Dataset

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")
_FILE_MODULE_PREFIX = "_sysarray_factory_"
_FILE_MODULES: dict[tuple[str, int, int], ModuleType] = {}  # (path, mtime_ns, size) -> module run from it
FACTORY_FORM = "'package.module:callable' or 'path/to/file.py:callable'"


# --------------------------------------------------------------------------- factory strings
def parse_factory(factory: object, where: str = "parse_factory", name: str = "factory") -> tuple[str, bool, str]:
    """``(module name or file path, is_file, attribute path)`` of a factory string; ValueError when malformed."""
    check_instance(factory, str, name, where, what=f"a str {FACTORY_FORM}")
    target, sep, attr = factory.strip().rpartition(":")
    is_file = target.endswith(".py") or "/" in target or os.sep in target
    if not sep or not target or not _IDENT.match(attr) or not (is_file or _IDENT.match(target)):
        raise ValueError(f"The '{name}' argument of {where} must be {FACTORY_FORM}. Got {factory!r} instead.")
    return target, is_file, attr


def resolve_factory(factory: object, where: str = "resolve_factory", name: str = "factory") -> str:
    """The factory string as a checkpoint records it: a file path made absolute (against the working directory)."""
    target, is_file, attr = parse_factory(factory, where, name)
    if is_file:
        target = str(Path(target).expanduser().resolve())
    return f"{target}:{attr}"


def load_factory(factory: str) -> Callable[..., Any]:
    """Import the callable ``factory`` names (running its module's code); ValueError saying why it cannot."""
    target, is_file, attr = parse_factory(factory, "load_factory")
    module = _module_from_file(Path(target), factory) if is_file else _module_by_name(target, factory)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"The model factory '{factory}' cannot be found: {getattr(obj, '__name__', target)!r} "
                             f"has no attribute {part!r}.")
        obj = getattr(obj, part)
    if not (inspect.isfunction(obj) or inspect.ismethod(obj) or (inspect.isclass(obj) and issubclass(obj, nn.Module))):
        raise ValueError(f"The model factory '{factory}' must name a Python function or an nn.Module class. "
                         f"Got {type(obj).__name__} instead.")
    return obj


def _module_by_name(name: str, factory: str) -> ModuleType:
    top = name.split(".")[0]
    if top in sys.stdlib_module_names or top == "__main__":
        raise ValueError(f"The model factory '{factory}' must be your own code. Got the module {name!r} instead "
                         "(standard-library and __main__ callables are refused).")
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise ValueError(f"The model factory '{factory}' cannot be imported: no module named {exc.name!r}. Put its "
                             "package on PYTHONPATH (or install it), or name a file: 'path/to/file.py:callable'.") from None
        raise ValueError(f"Importing the model factory '{factory}' failed: {_first_line(exc)}") from None
    except Exception as exc:  # the user's module raised while it loaded
        raise ValueError(f"Importing the model factory '{factory}' failed: {_first_line(exc)}") from None


def _module_from_file(path: Path, factory: str) -> ModuleType:
    """Run ``path`` as a module of its own (once per file version) and return it."""
    if not path.is_file() or path.suffix != ".py":
        what = "does not exist" if not path.exists() else "is not a .py file"
        raise ValueError(f"The model factory '{factory}' cannot be imported: {path} {what}. Give the file that "
                         "defines it ('path/to/file.py:callable'), or rewrite the checkpoint with `sysarray import-model`.")
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key in _FILE_MODULES:
        return _FILE_MODULES[key]
    name = _FILE_MODULE_PREFIX + hashlib.sha256(key[0].encode()).hexdigest()[:16]
    spec = importlib.util.spec_from_file_location(name, key[0])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # classes and dataclasses in the file look their module up by name
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)  # as for a script: the file may import modules beside it
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(name, None)
        if not isinstance(exc, Exception):
            raise
        raise ValueError(f"Running the model factory file {path} failed: {_first_line(exc)}") from None
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    _FILE_MODULES[key] = module
    return module


def factory_of_class(model: nn.Module) -> str | None:
    """``"module:Class"`` (or ``"/abs/file.py:Class"``) when ``model``'s class can be rebuilt with no
    arguments from an importable module (not ``__main__``); else None."""
    cls = type(model)
    module = sys.modules.get(cls.__module__)
    if module is None or cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
        return None
    try:
        inspect.signature(cls).bind()
    except (TypeError, ValueError):
        return None
    if cls.__module__.startswith(_FILE_MODULE_PREFIX):
        return f"{module.__file__}:{cls.__qualname__}"
    return f"{cls.__module__}:{cls.__qualname__}"


# --------------------------------------------------------------------------- kwargs and arch
def check_kwargs(kwargs: object, name: str = "kwargs", where: str = "check_kwargs") -> dict[str, Any]:
    """``kwargs`` as a plain JSON object (tuples become lists); TypeError when it is not JSON."""
    if kwargs is None:
        return {}
    requirement = ("a JSON object: a dict with str keys whose values are None, bool, int, finite float, str, "
                   "or lists and dicts of them")
    try:
        plain = json.loads(json.dumps(kwargs, allow_nan=False))
    except (TypeError, ValueError):
        raise TypeError(f"The '{name}' argument of {where} must be {requirement}. Got {_short(kwargs)} instead.") from None
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs) or not isinstance(plain, dict):
        raise TypeError(f"The '{name}' argument of {where} must be {requirement}. Got {_short(kwargs)} instead.")
    return plain


def factory_arch(factory: str, kwargs: Mapping[str, Any] | None, input_shape: Sequence[int], num_classes: int,
                 where: str = "factory_arch") -> dict[str, Any]:
    """The ``arch`` dict a checkpoint records for a factory-built model."""
    from accel_models.zoo._registry import check_input_shape

    spec = resolve_factory(factory, where)
    shape, n_cls = check_input_shape(input_shape, num_classes, where)
    return {"name": spec, "factory": spec, "kwargs": check_kwargs(kwargs, "kwargs", where),
            "input_shape": list(shape), "num_classes": n_cls}


def is_factory_arch(arch: object) -> bool:
    return isinstance(arch, Mapping) and "factory" in arch


def check_factory_arch(arch: Mapping[str, Any]) -> dict[str, Any]:
    """A factory ``arch`` read from a file, checked field by field; ValueError naming the bad field."""
    missing = [k for k in ("factory", "kwargs", "input_shape", "num_classes") if k not in arch]
    if missing:
        raise ValueError(f"its factory 'arch' lacks {', '.join(missing)}")
    parse_factory(arch["factory"], "the checkpoint's arch", "factory")
    shape = arch["input_shape"]
    if not isinstance(shape, list) or len(shape) != 3 or not all(type(d) is int and d >= 1 for d in shape):
        raise ValueError(f"its 'arch' input_shape must be [C, H, W] with positive ints. Got {shape!r} instead")
    if type(arch["num_classes"]) is not int or arch["num_classes"] < 2:
        raise ValueError(f"its 'arch' num_classes must be an int >= 2. Got {arch['num_classes']!r} instead")
    kwargs = check_kwargs(arch["kwargs"], "kwargs", "the checkpoint's arch")
    return {"name": str(arch.get("name", arch["factory"])), "factory": arch["factory"], "kwargs": kwargs,
            "input_shape": list(shape), "num_classes": arch["num_classes"]}


def build_from_arch(arch: Mapping[str, Any], seed: int = 0) -> nn.Module:
    """Import the factory of ``arch``, call it with its kwargs (torch seeded with ``seed``, the
    caller's RNG state kept) and return the model with ``model.arch`` set; ValueError when the
    factory cannot be imported, raises, or returns something other than an ``nn.Module``."""
    factory = arch["factory"]
    fn = load_factory(factory)
    kwargs = dict(arch.get("kwargs") or {})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(check_seed(seed, "build_from_arch"))
        try:
            model = fn(**kwargs)
        except Exception as exc:  # the user's code: any error is a bad factory or bad kwargs
            raise ValueError(f"The model factory '{factory}' raised {_first_line(exc)} when called with kwargs "
                             f"{json.dumps(kwargs, sort_keys=True)}.") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"The model factory '{factory}' must return a torch.nn.Module. Got {type(model).__name__} instead.")
    model.arch = {k: arch[k] for k in ("name", "factory", "kwargs", "input_shape", "num_classes")}
    return model


def check_logits(model: nn.Module, input_shape: Sequence[int], num_classes: int, what: str) -> None:
    """``model`` must map a ``2 x C x H x W`` batch to ``2 x num_classes`` logits (one eval-mode
    forward pass of zeros); ValueError naming ``what`` otherwise. The model's mode is kept."""
    param = next(model.parameters(), None)
    x = torch.zeros(2, *[int(d) for d in input_shape], device=None if param is None else param.device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:  # a shape mismatch inside the user's forward, most often
        raise ValueError(f"{what} fails on a 2 x {' x '.join(map(str, input_shape))} batch: {_first_line(exc)}") from None
    finally:
        model.train(was_training)
    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if got != (2, int(num_classes)):
        raise ValueError(f"{what} must map N x {' x '.join(map(str, input_shape))} images to N x {num_classes} logits. "
                         f"Got output {got} for a batch of 2 instead.")


def state_dict_mismatch(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]) -> str | None:
    """What differs between two state dicts' keys and shapes (None when nothing does)."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [f"{k} {tuple(given[k].shape)} (expected {tuple(expected[k].shape)})"
              for k in expected if k in given and tuple(expected[k].shape) != tuple(given[k].shape)]
    parts = [f"{label}: {', '.join(items[:4])}{' ...' if len(items) > 4 else ''}"
             for label, items in (("missing", missing), ("unexpected", unexpected), ("other shapes", shapes)) if items]
    return "; ".join(parts) or None


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The state dict in ``path``: a file of ``torch.save(model.state_dict())`` or a dict with a
    ``"state_dict"`` entry (a sysarray checkpoint, for one), read with ``weights_only=True``."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(2, "Weights file not found", str(p))
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a file that is not its own
        raise ValueError(f"The weights file {p} must be a state dict saved with torch.save(model.state_dict()). "
                         f"Got an unreadable file instead ({_first_line(exc)}).") from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                          for k, v in obj.items()):
        raise ValueError(f"The weights file {p} must hold a state dict (str names -> tensors), as "
                         f"torch.save(model.state_dict()) writes. Got {_short(obj)} instead.")
    return dict(obj)


# --------------------------------------------------------------------------- import_model
@dataclass
class ImportedModel:
    """What :func:`import_model` made: the float model (eval mode), its dataset, the training
    history (``{}`` when only weights were loaded), the float test accuracy (a fraction), the
    checkpoint written and the number of chip layers (GEMMs) of its int8 program."""

    model: nn.Module
    dataset: Dataset
    history: dict[str, Any]
    test_accuracy: float
    path: Path
    chip_layers: int


def import_model(
    out: str | os.PathLike[str],
    factory: str,
    dataset: str | os.PathLike[str] | Dataset,
    *,
    kwargs: Mapping[str, Any] | None = None,
    weights: str | os.PathLike[str] | None = None,
    train_epochs: int = 0,
    seed: int = 0,
    data_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
    **train_kwargs: Any,
) -> ImportedModel:
    """Build ``factory(**kwargs)`` for ``dataset``, load ``weights`` and/or train it, and write a checkpoint.

    ``dataset``: a ``Dataset``, a dataset name or a path (``load_dataset``). ``weights``: a state
    dict file (:func:`read_state_dict`). ``train_epochs > 0`` trains with
    :func:`accel_models.train.train` (after loading ``weights``, if given; ``train_kwargs`` such as
    batch_size, optimizer, lr go to it); one of the two is required. ``seed`` seeds the initial
    weights and the training. The model must give ``N x K`` logits and lower to an int8 program
    (checked before training, with the calibration ``sysarray run`` uses), so every command
    accepts the checkpoint.
    """
    from accel_models.checkpoint import save_checkpoint
    from accel_models.data import load_dataset
    from accel_models.evaluation import calibration_images, calibration_settings
    from accel_models.lowering import lower
    from accel_models.train import evaluate, train

    where = "import_model"
    check_output_path(out, "out", where)
    epochs = check_int(train_epochs, "train_epochs", where, lo=0)
    seed = check_seed(seed, where)
    if weights is None and epochs == 0:
        raise ValueError("import_model needs weights (--weights STATE_DICT.pt) or training (--train-epochs N > 0): "
                         "an untrained model is not worth a checkpoint.")
    spec = resolve_factory(factory, where)
    kwargs = check_kwargs(kwargs, "kwargs", where)
    data = dataset if hasattr(dataset, "train_x") else load_dataset(dataset, data_dir)
    model = build_from_arch(factory_arch(spec, kwargs, data.input_shape, data.num_classes, where), seed)
    check_logits(model, data.input_shape, data.num_classes, f"The model built by '{spec}'")
    if weights is not None:
        state = read_state_dict(weights)
        problem = state_dict_mismatch(model.state_dict(), state)
        if problem:
            raise ValueError(f"The weights in {weights} do not fit the model built by '{spec}': {problem}.")
        model.load_state_dict(state)
    # lowering depends on the layers, not the weights: refuse an unsupported model before training it
    chip_layers = len(lower(model, calibration_images(data)).gemms)
    history: dict[str, Any] = {}
    if epochs:
        history = train(model, data.train_x, data.train_y, epochs=epochs, seed=seed, progress=progress, **train_kwargs)
    model.eval()
    history["source"] = {"factory": spec, "kwargs": kwargs, "weights": None if weights is None else str(Path(weights).resolve()),
                         "train_epochs": epochs, "seed": seed}
    history["dataset"] = data.name
    history["test_accuracy"] = accuracy = evaluate(model, data.test_x, data.test_y)
    path = save_checkpoint(out, model, dataset=data, history=history, test_accuracy=accuracy,
                           extra={"calibration": calibration_settings()})
    return ImportedModel(model, data, history, accuracy, Path(path), chip_layers)


def _first_line(exc: BaseException, limit: int = 300) -> str:
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0].strip()}" if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


__all__ = [
    "FACTORY_FORM", "ImportedModel", "build_from_arch", "check_factory_arch", "check_kwargs", "check_logits",
    "factory_arch", "factory_of_class", "import_model", "is_factory_arch", "load_factory", "parse_factory",
    "read_state_dict", "resolve_factory", "state_dict_mismatch",
]
