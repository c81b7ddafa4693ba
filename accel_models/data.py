"""Offline dataset loaders (docs/design.md §5): ``digits``, ``mnist``, ``fashion-mnist``, ``cifar10``,
and a user's own data (an ``.npz`` file or an image folder, :mod:`accel_models.own_data`).

Nothing is ever downloaded. ``load_dataset(name, data_dir)`` reads files that are already on disk
and returns a :class:`Dataset` of float32 torch tensors ``N x C x H x W`` with values in ``[0, 1]``
and int64 labels ``N``.

==================  =========  ==========  ===============================================
name                images     train/test  source
==================  =========  ==========  ===============================================
``digits``          1 x 8 x 8  1438 / 359  scikit-learn's bundled ``load_digits`` (values
                                           0..16, scaled ``x/16``); a fixed stratified split
                                           (20% test, seed 0), the same on every call
``mnist``           1 x 28x28  60000/10000 the four standard IDX files in ``data_dir``
``fashion-mnist``   1 x 28x28  60000/10000 the same, default ``data_dir``
                                           ``/usr/share/datasets/fashion-mnist`` (Debian's
                                           package ``dataset-fashion-mnist``)
``cifar10``         3 x 32x32  50000/10000 "CIFAR-10 python version" pickle batches in
                                           ``data_dir`` or ``data_dir/cifar-10-batches-py``
==================  =========  ==========  ===============================================

8-bit sources are scaled ``x/255`` and digits ``x/16``: every pixel is exactly the float32 nearest
``k/255`` (``k/16``) for its integer value ``k``, so quantizing inputs back to 8 bits is lossless.

IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``, each plain or ``.gz``; the ``train-images.idx3-ubyte`` spelling and
torchvision's ``MNIST/raw`` / ``FashionMNIST/raw`` folders are found too) are checked strictly:
magic number (2051 images, 2049 labels), 28 x 28 images, file size equal to what the header
says, as many labels as images, labels 0..9. CIFAR batches are checked for their keys, shapes
(``N x 3072``), dtypes (uint8) and labels 0..9.

CIFAR batches are Python pickles. They are read with ``encoding='bytes'`` (the batches were
written by Python 2) by an unpickler that only lets through what a CIFAR batch holds (dicts, lists,
bytes, numbers and numpy arrays); any other global in the file is refused with a ValueError before
it is called, so a tampered file cannot run code. Still, only point ``data_dir`` at files you got
from a source you trust.

File contents are cached in-process (``functools.lru_cache`` keyed on path, size and modification
time), so loading the same dataset again costs only the float conversion; every call returns fresh
tensors that the caller may modify. :func:`clear_cache` frees the cache.
"""
from __future__ import annotations

import functools
import gzip
import importlib
import importlib.util
import os
import pickle
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from sysarray.validation import as_rng, check_fraction, check_instance, check_positive_int

DEFAULT_DATA_DIRS: dict[str, str] = {"fashion-mnist": "/usr/share/datasets/fashion-mnist"}

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0

IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension

MNIST_CLASSES = ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)

_IDX_STEMS = {  # split -> (images file, labels file), the names the MNIST and Fashion-MNIST sites use
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_SUBDIRS = {  # where else under data_dir the files commonly sit
    "mnist": ("mnist", "MNIST/raw"),
    "fashion-mnist": ("fashion-mnist", "fashion", "FashionMNIST/raw"),
}
_CIFAR_SUBDIR = "cifar-10-batches-py"
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = "test_batch"
_CIFAR_META = "batches.meta"

_HINTS = {
    "mnist": (
        "Get the four files of the MNIST database (http://yann.lecun.com/exdb/mnist/, or the "
        "MNIST/raw folder torchvision makes) and pass data_dir (--data-dir) pointing at the "
        "directory that holds them; nothing is downloaded at run time."
    ),
    "fashion-mnist": (
        "Install Debian's package dataset-fashion-mnist (apt-get install dataset-fashion-mnist), "
        "which puts them in /usr/share/datasets/fashion-mnist, or pass data_dir (--data-dir) "
        "pointing at a directory that holds them."
    ),
    "cifar10": (
        "Get the 'CIFAR-10 python version' (cifar-10-python.tar.gz from "
        "https://www.cs.toronto.edu/~kriz/cifar.html), extract it and pass data_dir (--data-dir) "
        "pointing at the extracted cifar-10-batches-py directory or its parent; nothing is "
        "downloaded at run time."
    ),
}
_TITLES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST", "cifar10": "CIFAR-10"}


# --------------------------------------------------------------------------- the dataset
@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """One image-classification dataset, already split into train and test.

    ``train_x``/``test_x`` are float32 tensors ``N x C x H x W`` with values in ``[0, 1]``;
    ``train_y``/``test_y`` are int64 tensors ``N`` with values ``0 .. num_classes - 1``.
    ``input_shape`` is ``(C, H, W)``, ``classes`` the label names (index = label),
    ``preprocessing`` a JSON-ready dict of what was done to the files (source, files, scaling,
    layout, split, limits). The tensors belong to this object: each ``load_dataset`` call makes new
    ones, so changing them in place affects nobody else.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    input_shape: tuple[int, int, int]
    classes: tuple[str, ...]
    preprocessing: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        if len(self.input_shape) != 3 or min(self.input_shape) < 1:
            raise ValueError(f"The 'input_shape' argument of Dataset must be (C, H, W) with positive sizes. Got {self.input_shape!r} instead.")
        object.__setattr__(self, "num_classes", check_positive_int(self.num_classes, "num_classes", "Dataset"))
        if len(self.classes) != self.num_classes:
            raise ValueError(f"The 'classes' argument of Dataset must name {self.num_classes} classes. Got {len(self.classes)} names instead.")
        for part in ("train", "test"):
            x, y = getattr(self, f"{part}_x"), getattr(self, f"{part}_y")
            if not isinstance(x, torch.Tensor) or x.dtype != torch.float32 or tuple(x.shape[1:]) != self.input_shape or x.dim() != 4:
                got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
                raise ValueError(f"The '{part}_x' argument of Dataset must be a float32 tensor N x {' x '.join(map(str, self.input_shape))}. Got {got} instead.")
            if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.shape != (x.shape[0],):
                got = f"{y.dtype} {tuple(y.shape)}" if isinstance(y, torch.Tensor) else type(y).__name__
                raise ValueError(f"The '{part}_y' argument of Dataset must be an int64 tensor of {x.shape[0]} labels. Got {got} instead.")
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise ValueError(f"The '{part}_y' argument of Dataset must hold labels 0..{self.num_classes - 1}. Got {int(y.min())}..{int(y.max())} instead.")
            if x.numel() and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
                raise ValueError(f"The '{part}_x' argument of Dataset must hold values in [0, 1]. Got {float(x.min())}..{float(x.max())} instead.")

    def __repr__(self) -> str:
        return (f"Dataset(name={self.name!r}, train={tuple(self.train_x.shape)}, test={tuple(self.test_x.shape)}, "
                f"num_classes={self.num_classes})")

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary: name, shapes, class names, sizes and the preprocessing."""
        return {
            "name": self.name,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "classes": list(self.classes),
            "train_size": int(self.train_x.shape[0]),
            "test_size": int(self.test_x.shape[0]),
            "preprocessing": dict(self.preprocessing),
        }

    def validation_split(
        self, fraction: float = 0.1, seed: int | np.random.Generator = 0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Carve a validation set out of the training set: ``(train_x, train_y, val_x, val_y)``.

        Stratified: each class gives ``fraction`` of its images (largest-remainder rounding, so
        the validation set has ``round(fraction * N)`` images in all). The same ``seed`` gives
        the same split; both parts keep the training set's order and are new tensors.
        """
        fraction = check_fraction(fraction, "fraction", "Dataset.validation_split", open_ends=True)
        rng = as_rng(seed, "Dataset.validation_split")
        n = int(self.train_y.shape[0])
        if n < 2:
            raise ValueError(f"Dataset.validation_split needs at least 2 training images. Got {n} instead.")
        keep, val = _stratified_split(self.train_y.numpy(), fraction, rng)
        keep_t, val_t = torch.from_numpy(keep), torch.from_numpy(val)
        return self.train_x[keep_t], self.train_y[keep_t], self.train_x[val_t], self.train_y[val_t]


# --------------------------------------------------------------------------- public entry points
def dataset_names() -> list[str]:
    """The names ``load_dataset`` accepts, sorted."""
    return list(DATASETS)


def load_dataset(
    name: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
    *,
    limit_train: int | None = None,
    limit_test: int | None = None,
) -> Dataset:
    """Load dataset ``name`` from local files; nothing is downloaded.

    ``name`` is one of :data:`DATASETS` (matched case-insensitively with ``_`` read as ``-``) or a
    path to a user's own data: an ``.npz`` file or an image folder (:mod:`accel_models.own_data`,
    docs/own-models.md). A name wins over a file of the same name in the working directory (write
    ``./digits`` for the file); a str is taken as a path when it names an existing file or folder,
    contains a path separator or ends with ``.npz``. ``data_dir`` is where a named dataset's files
    are (ignored for ``digits`` and paths; ``fashion-mnist`` defaults to
    ``/usr/share/datasets/fashion-mnist``). ``limit_train``/``limit_test`` keep only the first
    that many images of each split (all of them when larger or ``None``). Raises
    FileNotFoundError when the files are not there and ValueError when a file is malformed; both
    say what was expected and how to get it.
    """
    check_instance(name, (str, os.PathLike), "name", "load_dataset", what="a str (a dataset name) or a path")
    check_instance(data_dir, (str, os.PathLike), "data_dir", "load_dataset", none_ok=True, what="a path")
    limits = tuple(check_positive_int(v, n, "load_dataset", none_ok=True)
                   for v, n in ((limit_train, "limit_train"), (limit_test, "limit_test")))
    key = name.strip().lower().replace("_", "-") if isinstance(name, str) else None
    if key in _LOADERS:
        return _LOADERS[key](key, data_dir, *limits)
    text = os.fspath(name)
    if not isinstance(name, str) or os.path.exists(text) or os.sep in text or "/" in text or text.lower().endswith(".npz"):
        from accel_models.own_data import load_own_dataset

        return load_own_dataset(Path(text).expanduser(), *limits)
    raise ValueError(f"Unknown dataset {name!r}. Known datasets: {', '.join(DATASETS)}.")


def read_idx(path: str | os.PathLike[str], magic: int | None = None) -> np.ndarray:
    """Read one IDX file (plain or gzip) into a new uint8 array of the shape its header gives.

    Only unsigned-byte IDX files are accepted (magic ``0x0000 08 nd``); ``magic`` (2051 for
    images, 2049 for labels) further requires that exact magic number.
    """
    return _read_idx_file(Path(path), magic).copy()


def clear_cache() -> None:
    """Forget the file contents cached by earlier loads."""
    _read_idx_cached.cache_clear()
    _read_cifar_cached.cache_clear()
    _digits_arrays.cache_clear()
    own = sys.modules.get("accel_models.own_data")  # only loaded once an own dataset was
    if own is not None:
        own.clear_cache()


def _stratified_split(y: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(rest, picked)`` (sorted int64) with ``picked`` a stratified ``fraction`` of ``y``.

    ``round(fraction * n)`` images are picked (at least 1, at most n - 1); class ``c`` gives
    ``floor(n_c * picked / n)`` plus one more for the classes with the largest remainders (ties
    to the smaller label), computed in integers so the counts never depend on float rounding.
    """
    n = y.shape[0]
    n_pick = min(max(int(round(fraction * n)), 1), n - 1)
    labels, counts = np.unique(y, return_counts=True)
    quota, remainder = np.divmod(counts * n_pick, n)
    extra = n_pick - int(quota.sum())
    quota[np.argsort(-remainder, kind="stable")[:extra]] += 1
    picked = [rng.permutation(np.flatnonzero(y == c))[:q] for c, q in zip(labels, quota)]
    pick = np.sort(np.concatenate(picked)).astype(np.int64)
    mask = np.ones(n, dtype=bool)
    mask[pick] = False
    return np.flatnonzero(mask).astype(np.int64), pick


# --------------------------------------------------------------------------- digits
@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(images uint8 n x 8 x 8, labels int64 n, train indices, test indices)``, read-only."""
    images, labels = _read_digits()
    train, test = _stratified_split(labels, DIGITS_TEST_FRACTION, np.random.default_rng(DIGITS_SPLIT_SEED))
    for a in (images, labels, train, test):
        a.setflags(write=False)
    return images, labels, train, test


def _read_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 digits: images uint8 ``n x 8 x 8`` (values 0..16), labels int64 ``n``.

    Reads the CSV that ``sklearn.datasets.load_digits`` reads, without importing scikit-learn
    (a heavy import for one small file); falls back to ``load_digits`` if the file has moved.
    """
    spec = importlib.util.find_spec("sklearn")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            table = np.loadtxt(path, delimiter=",", dtype=np.float64)
            if table.shape == (1797, 65) and np.array_equal(table, np.round(table)) and 0 <= table.min() and table.max() <= 16:
                return table[:, :-1].astype(np.uint8).reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.uint8), bunch.target.astype(np.int64)  # the values are the integers 0..16


def _load_digits(name: str, data_dir: object, limit_train: int | None, limit_test: int | None) -> Dataset:
    images, labels, train, test = _digits_arrays()
    train, test = train[:limit_train], test[:limit_test]
    return Dataset(
        name=name,
        train_x=_to_float(images[train][:, None], 16),
        train_y=torch.from_numpy(labels[train]),
        test_x=_to_float(images[test][:, None], 16),
        test_y=torch.from_numpy(labels[test]),
        num_classes=10,
        input_shape=(1, 8, 8),
        classes=MNIST_CLASSES,
        preprocessing={
            "source": "sklearn.datasets.load_digits",
            "scale": "x/16",
            "dtype": "float32",
            "layout": "NCHW",
            "split": {"method": "stratified", "test_fraction": DIGITS_TEST_FRACTION, "seed": DIGITS_SPLIT_SEED},
            "limit_train": limit_train,
            "limit_test": limit_test,
        },
    )


def _to_float(images: np.ndarray, full_scale: int) -> torch.Tensor:
    """uint8 ``k`` -> float32 ``k / full_scale``: one correctly rounded division, a new tensor."""
    return torch.from_numpy(images.astype(np.float32)).div_(float(full_scale))


# --------------------------------------------------------------------------- IDX (MNIST, Fashion-MNIST)
def _file_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_mtime_ns, st.st_size


def _read_idx_file(path: Path, magic: int | None) -> np.ndarray:
    """The cached, read-only contents of IDX file ``path``; ValueError naming it when malformed."""
    arr = _read_idx_cached(*_file_key(path))
    if magic is not None:
        got = 0x800 + arr.ndim  # the cached reader accepted only unsigned-byte files, 0x0000 08 nd
        if got != magic:
            what = {IDX_IMAGES_MAGIC: "an IDX image file", IDX_LABELS_MAGIC: "an IDX label file"}.get(magic, "the IDX file wanted")
            raise ValueError(f"{path}: not {what}: the magic number is {got}, expected {magic}.")
    return arr


@functools.lru_cache(maxsize=16)
def _read_idx_cached(path: str, mtime_ns: int, size: int) -> np.ndarray:
    # mtime and size are part of the key so a file replaced on disk is read again.
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":  # gzip's magic: decompress whatever the file is called
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(f"{path}: a damaged gzip file ({exc}); expected a gzipped IDX file.") from None
    if len(raw) < 4:
        raise ValueError(f"{path}: {len(raw)} bytes is too short for an IDX file (a 4-byte magic number and the dimensions).")
    magic = int.from_bytes(raw[:4], "big")
    ndim = raw[3]
    if raw[:3] != b"\x00\x00\x08" or ndim < 1:
        raise ValueError(
            f"{path}: not an unsigned-byte IDX file: the magic number is {magic} (0x{magic:08x}), "
            f"expected {IDX_IMAGES_MAGIC} for images or {IDX_LABELS_MAGIC} for labels."
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header: {ndim} dimensions need {header} bytes, the file has {len(raw)}.")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        state = "truncated" if len(raw) < expected else "too long"
        raise ValueError(
            f"{path}: {state}: the IDX header gives dimensions {' x '.join(map(str, dims))}, "
            f"so {expected} bytes, but the file has {len(raw)}."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)  # read-only: a view of bytes


def _find_idx_dir(title: str, key: str, base: Path) -> tuple[Path, dict[str, Path]]:
    """The first of ``base`` and its usual subfolders that holds all four IDX files."""
    if not base.is_dir():
        what = "does not exist" if not base.exists() else "is not a directory"
        raise FileNotFoundError(f"{title} data directory {base} {what}. {_HINTS[key]}")
    wanted = [stem for pair in _IDX_STEMS.values() for stem in pair]
    for folder in (base, *(base / sub for sub in _IDX_SUBDIRS[key])):
        found = _idx_files_in(folder, wanted)
        if len(found) == len(wanted):
            return folder, found
    missing = [s for s in wanted if s not in _idx_files_in(base, wanted)]
    names = ", ".join(f"{s}(.gz)" for s in missing)
    raise FileNotFoundError(f"{title} files not found in {base}: expected {names}. {_HINTS[key]}")


def _idx_files_in(folder: Path, stems: list[str]) -> dict[str, Path]:
    """For each stem, the first of ``stem``, ``stem.gz`` and their ``.idx`` spellings in ``folder``."""
    found: dict[str, Path] = {}
    for stem in stems:
        dotted = stem.replace("-idx", ".idx")  # e.g. train-images.idx3-ubyte, as some archives unpack
        for candidate in (stem, stem + ".gz", dotted, dotted + ".gz"):
            if (folder / candidate).is_file():
                found[stem] = folder / candidate
                break
    return found


def _idx_split(title: str, key: str, images_path: Path, labels_path: Path, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        images = _read_idx_file(images_path, IDX_IMAGES_MAGIC)
        labels = _read_idx_file(labels_path, IDX_LABELS_MAGIC)
    except ValueError as exc:
        raise ValueError(f"Malformed {title} file {exc} {_HINTS[key]}") from None
    if images.shape[1:] != (28, 28):
        raise ValueError(f"Malformed {title} file {images_path}: images are {images.shape[1]} x {images.shape[2]}, expected 28 x 28. {_HINTS[key]}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"Malformed {title} files: {images_path} holds {images.shape[0]} images but {labels_path} "
            f"holds {labels.shape[0]} labels; they must agree. {_HINTS[key]}"
        )
    if labels.size and labels.max() > 9:
        raise ValueError(f"Malformed {title} file {labels_path}: labels must be 0..9, found {int(labels.max())}. {_HINTS[key]}")
    images, labels = images[:limit], labels[:limit]
    return _to_float(images[:, None], 255), torch.from_numpy(labels.astype(np.int64))


def _load_idx(name: str, data_dir: str | os.PathLike[str] | None, limit_train: int | None, limit_test: int | None) -> Dataset:
    title = _TITLES[name]
    if data_dir is None:
        if name not in DEFAULT_DATA_DIRS:
            stems = ", ".join(f"{s}(.gz)" for pair in _IDX_STEMS.values() for s in pair)
            raise FileNotFoundError(f"{title} needs data_dir (--data-dir): a directory holding {stems}. {_HINTS[name]}")
        data_dir = DEFAULT_DATA_DIRS[name]
    base = Path(data_dir).expanduser()
    folder, files = _find_idx_dir(title, name, base)
    train_x, train_y = _idx_split(title, name, files[_IDX_STEMS["train"][0]], files[_IDX_STEMS["train"][1]], limit_train)
    test_x, test_y = _idx_split(title, name, files[_IDX_STEMS["test"][0]], files[_IDX_STEMS["test"][1]], limit_test)
    return Dataset(
        name=name,
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        num_classes=10,
        input_shape=(1, 28, 28),
        classes=FASHION_MNIST_CLASSES if name == "fashion-mnist" else MNIST_CLASSES,
        preprocessing={
            "source": "idx",
            "data_dir": str(folder),
            "files": {stem: path.name for stem, path in files.items()},
            "scale": "x/255",
            "dtype": "float32",
            "layout": "NCHW",
            "split": "the files' own train/test split",
            "limit_train": limit_train,
            "limit_test": limit_test,
        },
    )


# --------------------------------------------------------------------------- CIFAR-10 (python pickles)
def _numpy_global(module: str, name: str) -> Any:
    for real in (module.replace("numpy.core", "numpy._core"), module.replace("numpy._core", "numpy.core")):
        try:
            return getattr(importlib.import_module(real), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"{module}.{name} is not available in this numpy")


_PICKLE_GLOBALS: dict[tuple[str, str], Callable[[], Any]] = {
    # Everything a numpy array (any pickle protocol, numpy 1 or 2) and a Python-3 bytes object need.
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: importlib.import_module("_codecs").encode,
    **{(m, n): functools.partial(_numpy_global, m, n)
       for m, n in [("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")]},
}


class _CifarUnpickler(pickle.Unpickler):
    """Refuses every global except the few numpy constructors a CIFAR batch needs."""

    def find_class(self, module: str, name: str) -> Any:
        make = _PICKLE_GLOBALS.get((module, name))
        if make is None:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: a CIFAR-10 batch holds only dicts, lists, bytes, numbers and numpy arrays"
            )
        return make()


def _unpickle(path: str) -> Any:
    with open(path, "rb") as f:
        try:
            return _CifarUnpickler(f, encoding="bytes").load()
        except Exception as exc:  # a broken pickle raises almost anything; report it as a bad file
            raise ValueError(f"{path}: not a readable CIFAR-10 python batch ({type(exc).__name__}: {exc}).") from None


def _get(d: dict, key: str) -> Any:
    """``d[b'key']`` (Python-2 pickles) or ``d['key']`` (written by Python 3 with str keys)."""
    return d[key.encode()] if key.encode() in d else d.get(key)


@functools.lru_cache(maxsize=8)
def _read_cifar_cached(path: str, mtime_ns: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 n x 3 x 32 x 32, labels int64 n)``, read-only, from one batch file."""
    batch = _unpickle(path)
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: a CIFAR-10 batch must be a dict with keys b'data' and b'labels'. Got a {type(batch).__name__} instead.")
    data, labels = _get(batch, "data"), _get(batch, "labels")
    if data is None or labels is None:
        keys = ", ".join(repr(k) for k in batch)
        raise ValueError(f"{path}: a CIFAR-10 batch must have keys b'data' and b'labels'. Got keys {keys} instead.")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"{path}: b'data' must be a uint8 array N x 3072 (3 x 32 x 32, channel-major). Got {got} instead.")
    try:
        labels = np.asarray(labels)
    except (ValueError, TypeError):
        labels = np.asarray([], dtype=object)
    if labels.ndim != 1 or labels.shape[0] != data.shape[0] or (labels.size and labels.dtype.kind not in "iu"):
        raise ValueError(f"{path}: b'labels' must be {data.shape[0]} integers (one per image). Got {labels.dtype} {labels.shape} instead.")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path}: b'labels' must be 0..9. Got {int(labels.min())}..{int(labels.max())} instead.")
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32))  # rows are 1024 R, 1024 G, 1024 B, row-major
    labels = labels.astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def _cifar_class_names(path: Path) -> tuple[str, ...]:
    meta = _unpickle(str(path))
    names = _get(meta, "label_names") if isinstance(meta, dict) else None
    if not isinstance(names, (list, tuple)) or len(names) != 10 or not all(isinstance(n, (bytes, str)) for n in names):
        raise ValueError(f"{path}: b'label_names' must be a list of 10 names. Got {names!r:.80} instead.")
    return tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names)


def _load_cifar10(name: str, data_dir: str | os.PathLike[str] | None, limit_train: int | None, limit_test: int | None) -> Dataset:
    wanted = (*_CIFAR_TRAIN, _CIFAR_TEST)
    if data_dir is None:
        raise FileNotFoundError(f"CIFAR-10 needs data_dir (--data-dir): a directory holding {', '.join(wanted)}. {_HINTS[name]}")
    base = Path(data_dir).expanduser()
    if not base.is_dir():
        what = "does not exist" if not base.exists() else "is not a directory"
        raise FileNotFoundError(f"CIFAR-10 data directory {base} {what}. {_HINTS[name]}")
    folder = next((d for d in (base, base / _CIFAR_SUBDIR) if all((d / f).is_file() for f in wanted)), None)
    if folder is None:
        missing = [f for f in wanted if not (base / f).is_file()]
        raise FileNotFoundError(
            f"CIFAR-10 files not found in {base} or {base / _CIFAR_SUBDIR}: expected {', '.join(wanted)} "
            f"(missing in {base}: {', '.join(missing)}). {_HINTS[name]}"
        )
    try:
        parts = [_read_cifar_cached(*_file_key(folder / f)) for f in _CIFAR_TRAIN]
        test_images, test_labels = _read_cifar_cached(*_file_key(folder / _CIFAR_TEST))
        classes = _cifar_class_names(folder / _CIFAR_META) if (folder / _CIFAR_META).is_file() else CIFAR10_CLASSES
    except ValueError as exc:
        raise ValueError(f"Malformed CIFAR-10 file {exc} {_HINTS[name]}") from None
    train_images = np.concatenate([p[0] for p in parts])[:limit_train]
    train_labels = np.concatenate([p[1] for p in parts])[:limit_train]
    return Dataset(
        name=name,
        train_x=_to_float(train_images, 255),
        train_y=torch.from_numpy(train_labels.copy()),
        test_x=_to_float(test_images[:limit_test], 255),
        test_y=torch.from_numpy(test_labels[:limit_test].copy()),
        num_classes=10,
        input_shape=(3, 32, 32),
        classes=classes,
        preprocessing={
            "source": "cifar-10 python pickles",
            "data_dir": str(folder),
            "files": list(wanted),
            "scale": "x/255",
            "dtype": "float32",
            "layout": "NCHW",
            "split": "the files' own train/test split (data_batch_1..5 / test_batch)",
            "limit_train": limit_train,
            "limit_test": limit_test,
        },
    )


_LOADERS: dict[str, Callable[[str, Any, int | None, int | None], Dataset]] = {
    "cifar10": _load_cifar10,
    "digits": _load_digits,
    "fashion-mnist": _load_idx,
    "mnist": _load_idx,
}

DATASETS: tuple[str, ...] = tuple(sorted(_LOADERS))
