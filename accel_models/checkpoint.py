"""Self-describing model checkpoints: architecture, weights, dataset and training record in one file.

A checkpoint is ``torch.save`` of a plain dict that holds only tensors and plain Python types
(dict, list, str, int, float, bool, None), so it loads with ``torch.load(weights_only=True)``, which
never runs code from the file:

==================  ==========================================================================
key                 value
==================  ==========================================================================
``format``          ``"sysarray-checkpoint"``
``version``         ``1`` (the layout of this dict)
``package_version`` the sysarray version that wrote it
``torch_version``   the torch version that wrote it
``arch``            ``{"name", "input_shape", "num_classes", "kwargs"}``: rebuilds the model with
                    ``accel_models.zoo.build_model``; or, for a user's own model,
                    ``{"name", "factory", "kwargs", "input_shape", "num_classes"}``: rebuilds it with
                    ``factory(**kwargs)`` (``accel_models.own_model``; this imports and runs the
                    factory's code, see docs/own-models.md)
``state_dict``      the float weights and buffers (CPU tensors)
``dataset``         the dataset name, e.g. ``"digits"``, or the absolute path of a user's own data
``input_shape``     ``[C, H, W]``
``num_classes``     int
``classes``         the class names, index = label
``preprocessing``   what was done to the images (a dict; the dataset's ``preprocessing``)
``training``        the trainer's history (settings, per-epoch loss and accuracy), or ``{}``
``test_accuracy``   the float model's test accuracy (a fraction), or None
``extra``           anything later stages add, e.g. clipping thresholds or calibration settings;
                    ``extra["clipping"]`` (a spec of ``accel_models.clipact``) makes ``load_checkpoint``
                    swap the model's ReLUs for clipped ones before loading the weights
==================  ==========================================================================

Files are written atomically (:func:`sysarray.atomic.atomic_write`: a temporary file in the same
folder, then ``os.replace``), so a crash never leaves a half-written checkpoint under the final
name; a new checkpoint gets the usual permissions (0o666 less the umask).
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from accel_models import own_model
from accel_models.zoo import MODELS, build_model, model_names
from sysarray.atomic import atomic_write
from sysarray.validation import check_output_path

FORMAT = "sysarray-checkpoint"
VERSION = 1
SUPPORTED_VERSIONS = (1,)
_REQUIRED_KEYS = ("arch", "state_dict", "dataset", "input_shape", "num_classes")


class CheckpointError(ValueError):
    """A file that cannot be used as a sysarray checkpoint (the message says why and what to do)."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint path does not exist."""


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("sysarray")
    except Exception:  # not installed (running from a source tree)
        import sysarray

        return str(getattr(sysarray, "__version__", "unknown"))


def _plain(value: Any, where: str) -> Any:
    """``value`` with only tensors and plain types (what ``weights_only=True`` loads); tuples become
    lists, numpy scalars Python numbers, numpy arrays tensors, paths strings. Raises TypeError."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value).copy())
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"Checkpoint field {where} must have str keys. Got key {k!r} ({type(k).__name__}) instead.")
            out[k] = _plain(v, f"{where}[{k!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(
        f"Checkpoint field {where} must hold only tensors, numbers, strings, None, lists and dicts "
        f"(what torch.load(weights_only=True) reads). Got {type(value).__name__} instead."
    )


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    dataset: Any,
    preprocessing: Mapping[str, Any] | None = None,
    history: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    test_accuracy: float | None = None,
    factory: str | None = None,
    factory_kwargs: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model``, its architecture and what it was trained on to ``path``.

    The architecture: a zoo model carries it (``model.arch``); a user's own model names a
    ``factory`` ("package.module:callable" or "path/to/file.py:callable", a file path is made
    absolute) that ``factory(**factory_kwargs)`` rebuilds it with (kwargs: JSON). A model loaded
    from a factory checkpoint carries its factory; a model whose class is importable by name and
    takes no arguments needs none (its class is the factory). A factory is checked here: it must
    rebuild a model with the same weight names and shapes, which maps images to logits.

    ``dataset``: an ``accel_models.data.Dataset`` (name, shape, classes and preprocessing are taken
    from it) or a dataset name (zoo models only: shape and classes then come from ``model.arch``;
    class names are "0".."K-1"). ``preprocessing`` overrides the dataset's. ``history``: the
    trainer's history dict; ``test_accuracy`` defaults to its ``test_accuracy``. ``extra``: a dict
    for later stages. Parent folders are created. Returns the path written.
    """
    check_output_path(path, "path", "save_checkpoint")  # before the work of gathering the record
    if isinstance(dataset, str):
        name, data_shape, data_pre = dataset, None, {}
    elif all(hasattr(dataset, a) for a in ("name", "input_shape", "num_classes", "classes")):
        name = str(dataset.name)
        data_shape = ([int(d) for d in dataset.input_shape], int(dataset.num_classes), [str(c) for c in dataset.classes])
        data_pre = getattr(dataset, "preprocessing", {}) or {}
    else:
        raise TypeError(
            f"The 'dataset' argument of save_checkpoint must be a Dataset or a dataset name. Got {type(dataset).__name__} instead."
        )
    arch = _plain(_model_arch(model, factory, factory_kwargs, data_shape, extra), "arch")
    if data_shape is None:
        input_shape, num_classes = list(arch["input_shape"]), int(arch["num_classes"])
        classes = [str(i) for i in range(num_classes)]
    else:
        input_shape, num_classes, classes = data_shape
    if list(arch["input_shape"]) != input_shape or int(arch["num_classes"]) != num_classes:
        raise ValueError(
            f"The model was built for inputs {arch['input_shape']} and {arch['num_classes']} classes, but "
            f"dataset {name!r} has {input_shape} and {num_classes}."
        )
    if own_model.is_factory_arch(arch):
        own_model.check_logits(model, input_shape, num_classes, "The 'model' argument of save_checkpoint")
    history = {} if history is None else history
    if test_accuracy is None:
        test_accuracy = history.get("test_accuracy")
    ckpt = {
        "format": FORMAT,
        "version": VERSION,
        "package_version": _package_version(),
        "torch_version": torch.__version__.split("+")[0],
        "arch": arch,
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "dataset": name,
        "input_shape": input_shape,
        "num_classes": num_classes,
        "classes": classes,
        "preprocessing": _plain(data_pre if preprocessing is None else preprocessing, "preprocessing"),
        "training": _plain(history, "history"),
        "test_accuracy": None if test_accuracy is None else float(test_accuracy),
        "extra": _plain({} if extra is None else extra, "extra"),
    }
    path = Path(path)
    atomic_write(path, lambda f: torch.save(ckpt, f), binary=True)
    return path


def _model_arch(model: nn.Module, factory: str | None, factory_kwargs: Mapping[str, Any] | None,
                data_shape: tuple[list[int], int, list[str]] | None, extra: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """The ``arch`` to record for ``model`` (see save_checkpoint); ``data_shape`` is the dataset's
    ``(input_shape, num_classes, classes)`` or None for a dataset name. A new factory is checked by
    rebuilding the model."""
    arch = getattr(model, "arch", None)
    if factory is None and factory_kwargs is not None:
        raise ValueError("The 'factory_kwargs' argument of save_checkpoint needs 'factory' (the callable they are for).")
    if factory is None and own_model.is_factory_arch(arch):
        return own_model.check_factory_arch(arch)
    if factory is None and isinstance(arch, Mapping) and arch.get("name") in MODELS:
        return arch
    if factory is None:
        factory = own_model.factory_of_class(model)
        if factory is None:
            raise ValueError(
                "The 'model' argument of save_checkpoint must be a zoo model built by accel_models.zoo.build_model, a "
                "model loaded from a checkpoint, or come with factory='package.module:callable' (or "
                "'path/to/file.py:callable') that builds it; its own class serves when it is importable by name and "
                f"takes no arguments. Got {type(model).__name__} with arch={arch!r} instead."
            )
    if data_shape is None:
        raise TypeError("The 'dataset' argument of save_checkpoint must be a Dataset for a model built by a factory "
                        "(its input shape and classes are recorded). Got a dataset name instead.")
    arch = own_model.factory_arch(factory, factory_kwargs, data_shape[0], data_shape[1], "save_checkpoint")
    rebuilt = _clipped(own_model.build_from_arch(arch), extra)
    problem = own_model.state_dict_mismatch(rebuilt.state_dict(), model.state_dict())
    if problem:
        raise ValueError(f"The factory '{arch['factory']}' with kwargs {arch['kwargs']} builds a model whose weights "
                         f"differ from the 'model' argument of save_checkpoint ({problem}); a checkpoint of it could "
                         "not be loaded.")
    return arch


def _clipped(model: nn.Module, extra: Any) -> nn.Module:
    """``model`` with its ReLUs swapped for clipped ones when ``extra["clipping"]`` holds a spec."""
    clipping = extra.get("clipping") if isinstance(extra, Mapping) else None
    if clipping is not None:
        from accel_models.clipact import apply_clipping

        apply_clipping(model, clipping)
    return model


def read_checkpoint(path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The validated checkpoint dict at ``path`` (weights included, model not built).

    Raises CheckpointNotFoundError (also a FileNotFoundError) when ``path`` does not exist and
    CheckpointError (a ValueError) when it is not a torch file, not a sysarray checkpoint, or a
    checkpoint version this package cannot read.
    """
    p = Path(path)
    hint = f"train one with `sysarray train --arch lenet5 --dataset digits -o {p}`"
    if not p.exists():
        raise CheckpointNotFoundError(f"Checkpoint file '{p}' does not exist; {hint}.")
    if not p.is_file():
        raise CheckpointError(f"Checkpoint path '{p}' is not a file; {hint}.")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower():
            raise CheckpointError(
                f"'{p}' is not a sysarray checkpoint: it holds Python objects other than tensors and plain "
                f"types, which torch.load(weights_only=True) refuses to run; {hint}."
            ) from None
        raise CheckpointError(f"'{p}' is not a torch file ({type(exc).__name__}: {_first_line(exc)}); {hint}.") from None
    except (RuntimeError, EOFError, ValueError, OSError, AttributeError, ImportError, IndexError, KeyError, TypeError) as exc:
        raise CheckpointError(f"'{p}' is not a torch file ({type(exc).__name__}: {_first_line(exc)}); {hint}.") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"'{p}' is not a sysarray checkpoint (no 'format': '{FORMAT}' key); train one with `sysarray train`.")
    version = ckpt.get("version")
    if version not in SUPPORTED_VERSIONS:
        raise CheckpointError(
            f"Checkpoint '{p}' has format version {version!r}, written by sysarray "
            f"{ckpt.get('package_version', 'unknown')}; this sysarray ({_package_version()}) reads version "
            f"{', '.join(map(str, SUPPORTED_VERSIONS))}. Retrain it with `sysarray train` or use a matching sysarray."
        )
    missing = [k for k in _REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"Checkpoint '{p}' is damaged: it lacks the key(s) {', '.join(missing)}; {hint}.")
    arch = ckpt["arch"]
    if not isinstance(arch, dict) or not isinstance(arch.get("name"), str) or not isinstance(ckpt["state_dict"], dict):
        raise CheckpointError(f"Checkpoint '{p}' is damaged: 'arch' must be a dict with a 'name' and 'state_dict' a dict; {hint}.")
    if own_model.is_factory_arch(arch):
        try:
            ckpt["arch"] = own_model.check_factory_arch(arch)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"Checkpoint '{p}' is damaged: {exc}.") from None
    return ckpt


def load_checkpoint(
    path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model saved at ``path`` and load its weights.

    A zoo architecture is rebuilt from the zoo registry; a factory architecture by importing the
    factory and calling it with its kwargs, which runs the factory's code (docs/own-models.md).
    Returns ``(model, meta)``: the float model in eval mode on ``map_location`` (``model.arch`` as
    recorded), and the checkpoint dict without ``state_dict`` plus ``path`` (see the module
    docstring for the keys). Errors as in ``read_checkpoint``, plus CheckpointError for an unknown
    architecture, a factory that cannot be imported, raises or gives no ``N x K`` logits, and
    mismatched weights.
    """
    ckpt = read_checkpoint(path, map_location=map_location)
    arch = ckpt["arch"]
    name = arch["name"]
    own = own_model.is_factory_arch(arch)
    if not own and name not in MODELS:
        raise CheckpointError(
            f"Checkpoint '{path}' holds architecture {name!r}, which this sysarray does not know. "
            f"Known models: {', '.join(model_names())}."
        )
    try:
        if own:
            model = own_model.build_from_arch(arch)
        else:
            model = build_model(
                name, arch.get("input_shape", ckpt["input_shape"]), arch.get("num_classes", ckpt["num_classes"]),
                **arch.get("kwargs", {}),
            )
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"Checkpoint '{path}' cannot rebuild its {name!r} model: {exc}") from None
    try:  # a clipped model (sysarray clip): swap its ReLUs before loading the thresholds
        _clipped(model, ckpt.get("extra"))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"Checkpoint '{path}' has clipping thresholds that do not fit its {name!r} model: {exc}") from None
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"Checkpoint '{path}' weights do not fit its {name!r} architecture: {_first_line(exc, 300)}"
        ) from None
    if own:
        try:
            own_model.check_logits(model, arch["input_shape"], arch["num_classes"], f"The model built by '{name}'")
        except ValueError as exc:
            raise CheckpointError(f"Checkpoint '{path}': {exc}") from None
    model.to(map_location).eval()
    meta = {k: v for k, v in ckpt.items() if k != "state_dict"}
    meta["path"] = os.fspath(path)
    return model, meta


def _first_line(exc: BaseException, limit: int = 200) -> str:
    lines = str(exc).strip().splitlines()
    text = " ".join(line.strip() for line in lines[:2]) if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
