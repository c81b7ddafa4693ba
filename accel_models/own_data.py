"""A user's own image-classification data: an ``.npz`` file or an image folder (docs/own-models.md).

``accel_models.data.load_dataset(path)`` comes here when it is given a path instead of a dataset
name. Both formats become the same :class:`~accel_models.data.Dataset` as the named datasets:
float32 images ``N x C x H x W`` in ``[0, 1]``, int64 labels ``0 .. K-1``, a train and a test
split, class names, and a ``preprocessing`` record of what was done. The dataset's ``name`` is the
absolute path, so a checkpoint trained on it finds it again.

**.npz file** (``numpy.savez``; read with ``allow_pickle=False``):

- ``x``: images ``N x C x H x W`` or ``N x H x W`` (one channel); ``y``: ``N`` integer labels.
- A split, optionally: the arrays ``x_train, y_train, x_test, y_test`` instead of ``x, y``, or
  index arrays ``train`` and ``test`` into ``x`` (disjoint, without repeats, each non-empty; images
  in neither are left out). Without one, a stratified split puts ``OWN_TEST_FRACTION`` of every
  class in the test split, drawn with seed ``OWN_SPLIT_SEED`` (the same on every call).
- ``classes``, optionally: ``K`` distinct non-empty names (a str array); labels are then ``0..K-1``.
  Without it there are ``max(label) + 1`` classes named ``"0"``, ``"1"``, ...
- Pixel values: an integer array must hold ``0..255`` and is scaled ``x/255``; a float array with
  values in ``[0, 1]`` is kept as it is; a float array of whole numbers in ``0..255`` is scaled
  ``x/255``; any other float array is scaled by its range over the whole file,
  ``(x - min) / (max - min)``, and ``min`` and ``max`` are recorded.

**Image folder**: ``root/<class>/*.png|*.jpg|*.jpeg`` (stratified split as above), or
``root/train/<class>/...`` and ``root/test/<class>/...`` (the folders' own split; the test split
may lack classes, not add them). Classes are the folder names in sorted order; images are read in
sorted file-name order with Pillow. Every image must have the same size (nothing is resized).
Grayscale images (modes ``1``, ``L``, ``LA``) give one channel; if any image is in colour (``P``,
``PA``, ``RGB``, ``RGBA``), all become RGB (grey repeated in three channels). Transparency is
dropped. Files and folders whose names start with ``.`` are skipped; anything else that is not an
image in a class folder is an error.

Every check raises a ValueError (FileNotFoundError for a missing path) that names the file and
says what was expected. Contents are cached in-process keyed on path, size and modification time
(every image file's, for folders), like the named datasets.
"""
from __future__ import annotations

import functools
import hashlib
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from accel_models.data import Dataset, _file_key, _stratified_split, _to_float

OWN_TEST_FRACTION = 0.2
OWN_SPLIT_SEED = 0
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
NPZ_KEYS = ("x", "y", "train", "test", "x_train", "y_train", "x_test", "y_test", "classes")

_GRAY_MODES = ("1", "L", "LA")
_COLOR_MODES = ("P", "PA", "RGB", "RGBA")


@dataclass(frozen=True)
class _OwnArrays:
    """What a file or folder holds, validated: read-only arrays shared by every load of it.

    ``images`` ``N x C x H x W`` are uint8 (scaled ``x/255`` when loaded) or float32 already in
    ``[0, 1]``; ``labels`` int64 ``N``; ``train``/``test`` int64 indices into them.
    """

    images: np.ndarray
    labels: np.ndarray
    train: np.ndarray
    test: np.ndarray
    classes: tuple[str, ...]
    preprocessing: dict[str, Any]


def load_own_dataset(path: Path, limit_train: int | None, limit_test: int | None) -> Dataset:
    """The :class:`Dataset` in the ``.npz`` file or image folder ``path`` (see the module docstring)."""
    if not path.exists():
        raise FileNotFoundError(
            f"Dataset path '{path}' does not exist; expected a dataset name, an .npz file with arrays x and y, or "
            "an image folder root/<class>/*.png."
        )
    if path.is_dir():
        arrays = _read_folder_cached(*_folder_key(path))
    else:
        arrays = _read_npz_cached(*_file_key(path))
    train, test = arrays.train[:limit_train], arrays.test[:limit_test]
    return Dataset(
        name=str(path.resolve()),
        train_x=_as_float(arrays.images[train]),
        train_y=torch.from_numpy(arrays.labels[train]),
        test_x=_as_float(arrays.images[test]),
        test_y=torch.from_numpy(arrays.labels[test]),
        num_classes=len(arrays.classes),
        input_shape=arrays.images.shape[1:],
        classes=arrays.classes,
        preprocessing={**arrays.preprocessing, "dtype": "float32", "layout": "NCHW",
                       "limit_train": limit_train, "limit_test": limit_test},
    )


def clear_cache() -> None:
    """Forget the own datasets cached by earlier loads."""
    _read_npz_cached.cache_clear()
    _read_folder_cached.cache_clear()


def _as_float(images: np.ndarray) -> torch.Tensor:
    """A new float32 tensor: uint8 ``k`` -> ``k/255``, float32 copied as it is."""
    if images.dtype == np.uint8:
        return _to_float(images, 255)
    return torch.from_numpy(images.copy())


def _bad(what: str, where: str, requirement: str, got: str) -> ValueError:
    return ValueError(f"The {what} of {where} must be {requirement}. Got {got} instead.")


def _describe(a: np.ndarray) -> str:
    return f"{a.dtype} {tuple(a.shape)}"


# --------------------------------------------------------------------------- splits and labels (both formats)
def _default_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    train, test = _stratified_split(labels, OWN_TEST_FRACTION, np.random.default_rng(OWN_SPLIT_SEED))
    return train, test, {"method": "stratified", "test_fraction": OWN_TEST_FRACTION, "seed": OWN_SPLIT_SEED}


def _check_classes(labels: np.ndarray, train: np.ndarray, classes: tuple[str, ...] | None, where: str) -> tuple[str, ...]:
    """The class names (given, or "0".."K-1"); every class must have a training image, K >= 2."""
    k = len(classes) if classes is not None else int(labels.max()) + 1
    if classes is not None and int(labels.max()) >= k:
        raise _bad("labels", where, f"within 0..{k - 1} (one per name in 'classes')", f"label {int(labels.max())}")
    if k < 2:
        raise _bad("labels", where, "at least 2 classes", "1 class")
    seen = np.bincount(labels[train], minlength=k)
    empty = np.flatnonzero(seen == 0)
    if empty.size:
        names = ", ".join(repr(classes[i]) if classes is not None else str(int(i)) for i in empty[:5])
        raise _bad("training split", where, f"images of every class 0..{k - 1}",
                   f"no training image of class {names}" + (" (and more)" if empty.size > 5 else ""))
    return classes if classes is not None else tuple(str(i) for i in range(k))


# --------------------------------------------------------------------------- .npz
@functools.lru_cache(maxsize=4)
def _read_npz_cached(path: str, mtime_ns: int, size: int) -> _OwnArrays:
    where = f"dataset file '{path}'"
    raw = Path(path).read_bytes()
    try:
        loaded = np.load(io.BytesIO(raw), allow_pickle=False)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise ValueError(f"The {where} must be an .npz archive written by numpy.savez with arrays x and y. "
                         f"Got an unreadable file instead ({type(exc).__name__}: {exc}).") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise _bad("contents", where, "an .npz archive (numpy.savez) with arrays x and y", "a single .npy array")
    with loaded as npz:
        keys = sorted(npz.files)
        try:
            arrays = {k: npz[k] for k in keys if k in NPZ_KEYS}
        except (ValueError, OSError, zipfile.BadZipFile) as exc:
            raise _bad("arrays", where, "plain numeric or str arrays (the file is read with allow_pickle=False)",
                       f"an unreadable array ({exc})") from None
    unknown = [k for k in keys if k not in NPZ_KEYS]
    if unknown:
        raise _bad("arrays", where, f"named from {', '.join(NPZ_KEYS)}", f"{', '.join(map(repr, unknown))}")
    images, labels, train, test, split, source_keys = _npz_split(arrays, where)
    file_layout = "N x H x W (one channel)" if arrays[source_keys[0]].ndim == 3 else "N x C x H x W"
    images, scale = _npz_pixels(images, where)
    classes = _npz_class_names(arrays.get("classes"), where)
    classes = _check_classes(labels, train, classes, where)
    for a in (images, labels, train, test):
        a.setflags(write=False)
    return _OwnArrays(images, labels, train, test, classes, {
        "source": "npz", "file": path, "sha256": hashlib.sha256(raw).hexdigest(), "arrays": source_keys,
        "file_layout": file_layout, "split": split, **scale,
    })


def _npz_split(a: dict[str, np.ndarray], where: str):
    """``(images N x C x H x W, labels int64, train, test, split record, keys used)`` from the arrays."""
    explicit = [k for k in ("x_train", "y_train", "x_test", "y_test") if k in a]
    plain = [k for k in ("x", "y", "train", "test") if k in a]
    if explicit and plain:
        raise _bad("arrays", where, "either x, y (with optional train, test indices) or x_train, y_train, x_test, "
                   "y_test", f"both kinds: {', '.join(plain + explicit)}")
    if explicit:
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in a]
        if missing:
            raise _bad("arrays", where, "x_train, y_train, x_test and y_test together", f"no {', '.join(missing)}")
        xs = [_npz_images(a[k], k, where) for k in ("x_train", "x_test")]
        ys = [_npz_labels(a[k], len(x), k, xk, where) for k, x, xk in (("y_train", xs[0], "x_train"), ("y_test", xs[1], "x_test"))]
        if xs[0].shape[1:] != xs[1].shape[1:]:
            raise _bad("'x_test' images", where, f"{' x '.join(map(str, xs[0].shape[1:]))} like 'x_train'",
                       " x ".join(map(str, xs[1].shape[1:])))
        if (xs[0].dtype.kind == "f") != (xs[1].dtype.kind == "f"):
            raise _bad("'x_test' array", where, f"of the same kind as 'x_train' ({xs[0].dtype}: both integer or both float)",
                       str(xs[1].dtype))
        n_train = len(xs[0])
        images = np.concatenate(xs)
        labels = np.concatenate(ys)
        n = len(images)
        return (images, labels, np.arange(n_train, dtype=np.int64), np.arange(n_train, n, dtype=np.int64),
                "the file's x_train/x_test arrays", ["x_train", "y_train", "x_test", "y_test"])
    missing = [k for k in ("x", "y") if k not in a]
    if missing:
        raise _bad("arrays", where, "x and y (or x_train, y_train, x_test, y_test)", f"no {', '.join(missing)}")
    images = _npz_images(a["x"], "x", where)
    labels = _npz_labels(a["y"], len(images), "y", "x", where)
    if ("train" in a) != ("test" in a):
        raise _bad("arrays", where, "'train' and 'test' index arrays together", f"only '{'train' if 'train' in a else 'test'}'")
    if "train" not in a:
        if len(images) < 2:
            raise _bad("'x' array", where, "at least 2 images to split into train and test", "1 image")
        train, test, split = _default_split(labels)
        return images, labels, train, test, split, ["x", "y"]
    train = _npz_indices(a["train"], "train", len(images), where)
    test = _npz_indices(a["test"], "test", len(images), where)
    both = np.intersect1d(train, test)
    if both.size:
        raise _bad("'train' and 'test' indices", where, "disjoint", f"{both.size} image(s) in both, e.g. {int(both[0])}")
    return images, labels, train, test, "the file's train/test index arrays", ["x", "y", "train", "test"]


def _npz_images(x: np.ndarray, key: str, where: str) -> np.ndarray:
    """Images N x C x H x W (a view when possible) of an allowed dtype; pixel values checked later."""
    if x.ndim not in (3, 4) or x.dtype.kind not in "uif":
        raise _bad(f"'{key}' array", where, "images N x C x H x W or N x H x W, uint8 (0..255) or float", _describe(x))
    if x.ndim == 3:
        x = x[:, None]
    if min(x.shape) < 1:
        raise _bad(f"'{key}' array", where, "at least one image with C, H and W of 1 or more", _describe(x))
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        bad = np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))
        raise _bad(f"'{key}' array", where, "finite numbers (no NaN or infinity)",
                   f"{bad.size} image(s) with NaN or infinity, the first at index {int(bad[0])}")
    if x.dtype.kind in "iu":
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise _bad(f"'{key}' array", where, "8-bit pixel values 0..255 (an integer array is scaled x/255)",
                       f"values {lo}..{hi}")
        x = x.astype(np.uint8, copy=False)
    return x


def _npz_labels(y: np.ndarray, n: int, key: str, x_key: str, where: str) -> np.ndarray:
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise _bad(f"'{key}' array", where, f"{n} integer labels (a 1-d int array, one per image of '{x_key}')", _describe(y))
    if len(y) != n:
        raise _bad(f"'{key}' array", where, f"{n} labels, one per image of '{x_key}'", f"{len(y)} labels")
    if int(y.min()) < 0:
        raise _bad(f"'{key}' array", where, "labels >= 0", f"label {int(y.min())}")
    return y.astype(np.int64)


def _npz_indices(idx: np.ndarray, key: str, n: int, where: str) -> np.ndarray:
    if idx.ndim != 1 or idx.dtype.kind not in "iu" or idx.size == 0:
        raise _bad(f"'{key}' array", where, f"a non-empty 1-d int array of image indices 0..{n - 1}", _describe(idx))
    if int(idx.min()) < 0 or int(idx.max()) >= n:
        raise _bad(f"'{key}' array", where, f"indices within 0..{n - 1}", f"{int(idx.min())}..{int(idx.max())}")
    idx = idx.astype(np.int64)
    if np.unique(idx).size != idx.size:
        raise _bad(f"'{key}' array", where, "indices without repeats", f"{idx.size - np.unique(idx).size} repeated")
    return idx


def _npz_pixels(images: np.ndarray, where: str) -> tuple[np.ndarray, dict[str, Any]]:
    """uint8 images, or float32 images in [0, 1], and the scaling record."""
    if images.dtype == np.uint8:
        return np.ascontiguousarray(images), {"scale": "x/255"}
    x = images.astype(np.float64)
    lo, hi = float(x.min()), float(x.max())
    if lo >= 0.0 and hi <= 1.0:
        return np.ascontiguousarray(images.astype(np.float32)), {"scale": "none (float values already in [0, 1])"}
    if lo >= 0.0 and hi <= 255.0 and np.array_equal(x, np.round(x)):
        return x.astype(np.uint8), {"scale": "x/255 (float array of whole numbers 0..255)"}
    if hi == lo:
        raise _bad("'x' images", where, "values in [0, 1], 0..255, or a range to scale from", f"every value {lo}")
    scaled = ((x - lo) / (hi - lo)).astype(np.float32)
    np.clip(scaled, 0.0, 1.0, out=scaled)  # float32 rounding may step just past 1
    return scaled, {"scale": "(x - min) / (max - min) over the whole file", "min": lo, "max": hi}


def _npz_class_names(classes: np.ndarray | None, where: str) -> tuple[str, ...] | None:
    if classes is None:
        return None
    if classes.ndim != 1 or classes.dtype.kind not in "US" or classes.size == 0:
        raise _bad("'classes' array", where, "a 1-d array of class names (str)", _describe(classes))
    names = tuple(c.decode("utf-8", "replace") if isinstance(c, bytes) else str(c) for c in classes.tolist())
    if any(not n.strip() for n in names) or len(set(names)) != len(names):
        raise _bad("'classes' array", where, "distinct non-empty names", repr(list(names)))
    return names


# --------------------------------------------------------------------------- image folder
def _visible(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if not p.name.startswith(".")), key=lambda p: p.name)


def _folder_key(root: Path) -> tuple:
    """The folder, its layout, and (name, mtime, size) of every entry: a changed file reloads."""
    root = root.resolve()
    entries = []
    for split_dir in _split_dirs(root).values():
        for cls in _class_dirs(split_dir, root):
            for f in _visible(cls):
                st = f.stat()
                entries.append((str(f.relative_to(root)), st.st_mtime_ns, st.st_size, f.is_file()))
    return str(root), tuple(entries)


def _split_dirs(root: Path) -> dict[str, Path]:
    """``{"all": root}`` or ``{"train": root/train, "test": root/test}``."""
    subdirs = {p.name: p for p in _visible(root) if p.is_dir()}
    loose = [p.name for p in _visible(root) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    where = f"dataset folder '{root}'"
    if loose:
        raise _bad("images", where, "in one folder per class (root/<class>/*.png)", f"image file(s) in the folder itself, e.g. {loose[0]!r}")
    if "train" in subdirs or "test" in subdirs:
        others = sorted(set(subdirs) - {"train", "test"})
        if "train" not in subdirs or "test" not in subdirs or others:
            raise _bad("subfolders", where, "either one folder per class, or exactly train/ and test/ with one folder "
                       "per class in each", ", ".join(f"{s}/" for s in sorted(subdirs)))
        return {"train": subdirs["train"], "test": subdirs["test"]}
    if not subdirs:
        raise _bad("contents", where, "one folder per class holding its images (root/<class>/*.png)", "no folders")
    return {"all": root}


def _class_dirs(folder: Path, root: Path) -> list[Path]:
    where = f"dataset folder '{root}'"
    entries = _visible(folder)
    dirs = [p for p in entries if p.is_dir()]
    if folder != root:
        stray = [p.name for p in entries if not p.is_dir()]
        if stray:
            raise _bad(f"'{folder.name}/' folder", where, "one folder per class and nothing else", f"the file {stray[0]!r}")
    if not dirs:
        raise _bad(f"'{folder.relative_to(root)}/' folder" if folder != root else "contents", where,
                   "one folder per class holding its images", "no class folders")
    return dirs


@functools.lru_cache(maxsize=2)
def _read_folder_cached(root: str, entries: tuple) -> _OwnArrays:
    base = Path(root)
    where = f"dataset folder '{root}'"
    splits = _split_dirs(base)
    per_split = {name: {d.name: d for d in _class_dirs(folder, base)} for name, folder in splits.items()}
    classes = tuple(per_split.get("train", per_split.get("all")))
    if "test" in per_split:
        extra = sorted(set(per_split["test"]) - set(classes))
        if extra:
            raise _bad("'test/' class folders", where, f"among the training classes ({', '.join(classes)})",
                       ", ".join(extra))
    images: list[np.ndarray] = []
    labels: list[int] = []
    split_of: list[str] = []
    size: tuple[int, int] | None = None
    first = ""
    for split, class_dirs in per_split.items():
        for name, folder in class_dirs.items():
            files = _visible(folder)
            if not files:
                raise _bad(f"class folder '{folder.relative_to(base)}/'", where, "at least one image", "an empty folder")
            for f in files:
                arr = _read_image(f, base)
                if size is None:
                    size, first = arr.shape[:2], str(f.relative_to(base))
                elif arr.shape[:2] != size:
                    raise _bad(f"image '{f.relative_to(base)}'", where,
                               f"{size[1]} x {size[0]} pixels like '{first}' (every image the same size; nothing is resized)",
                               f"{arr.shape[1]} x {arr.shape[0]}")
                images.append(arr)
                labels.append(classes.index(name))
                split_of.append(split)
    color = any(a.ndim == 3 for a in images)
    stacked = np.stack([_channels_first(a, color) for a in images])
    labels_a = np.asarray(labels, dtype=np.int64)
    if "all" in per_split:
        train, test, split_rec = _default_split(labels_a)
    else:
        which = np.asarray(split_of)
        train = np.flatnonzero(which == "train").astype(np.int64)
        test = np.flatnonzero(which == "test").astype(np.int64)
        split_rec = "the folder's train/ and test/ subfolders"
    _check_classes(labels_a, train, classes, where)
    for a in (stacked, labels_a, train, test):
        a.setflags(write=False)
    return _OwnArrays(stacked, labels_a, train, test, classes, {
        "source": "image folder", "root": root,
        "folders": "root/<class>/" if "all" in per_split else "root/train/<class>/, root/test/<class>/",
        "channels": "RGB (grayscale images repeated in 3 channels, transparency dropped)" if color else "grayscale",
        "scale": "x/255", "split": split_rec,
    })


def _read_image(path: Path, root: Path) -> np.ndarray:
    """One image as uint8 ``H x W`` (grayscale) or ``H x W x 3`` (colour); ValueError naming it."""
    where = f"dataset folder '{root}'"
    rel = path.relative_to(root)
    if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
        raise _bad(f"entry '{rel}'", where, f"an image file ({', '.join(IMAGE_SUFFIXES)}) in a class folder",
                   "a folder" if path.is_dir() else f"a {path.suffix or 'suffix-less'} file")
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise ImportError("Reading an image folder needs Pillow (pip install pillow), which matplotlib installs; "
                          "or save the images as an .npz file with arrays x and y.") from None
    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode in _GRAY_MODES:
                return np.asarray(im.convert("L"), dtype=np.uint8)
            if mode in _COLOR_MODES:
                return np.asarray(im.convert("RGBA").convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise _bad(f"image '{rel}'", where, "a readable PNG or JPEG file", f"{type(exc).__name__}: {exc}") from None
    raise _bad(f"image '{rel}'", where, f"an 8-bit grayscale or colour image (mode {', '.join(_GRAY_MODES + _COLOR_MODES)})",
               f"mode {mode}")


def _channels_first(a: np.ndarray, color: bool) -> np.ndarray:
    if a.ndim == 2:
        return np.repeat(a[None], 3, axis=0) if color else a[None]
    return a.transpose(2, 0, 1)


__all__ = ["IMAGE_SUFFIXES", "NPZ_KEYS", "OWN_SPLIT_SEED", "OWN_TEST_FRACTION", "clear_cache", "load_own_dataset"]
