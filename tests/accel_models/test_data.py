"""Tests for accel_models.data: the offline loaders, their file checks and the splits."""
from __future__ import annotations

import gzip
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from accel_models import data as D
from accel_models.data import DATASETS, Dataset, dataset_names, load_dataset, read_idx

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


# --------------------------------------------------------------------------- file writers (the real formats)
def write_idx(path: Path, arr: np.ndarray, *, gz: bool = False, magic: int | None = None) -> Path:
    """Write ``arr`` (uint8) as an IDX file: magic 0x0000 08 ndim, big-endian uint32 dims, data."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    magic = 0x800 + arr.ndim if magic is None else magic
    raw = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape) + arr.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw)
    path.write_bytes(raw)
    return path


def make_idx_dir(folder: Path, n_train: int = 20, n_test: int = 10, *, gz: bool = False, seed: int = 0,
                 names: tuple[str, ...] = IDX_NAMES) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train_x": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_y": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_x": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_y": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    arrays["train_x"][0, 0, :2] = (0, 255)  # both ends of the range
    folder.mkdir(parents=True, exist_ok=True)
    for name, key in zip(names, ("train_x", "train_y", "test_x", "test_y")):
        write_idx(folder / name, arrays[key], gz=gz)
    return arrays


def write_cifar_batch(path: Path, images: np.ndarray, labels, *, protocol: int = 2, extra: dict | None = None) -> None:
    """A batch as the CIFAR-10 python version holds it: dict of bytes keys, data N x 3072 uint8."""
    batch = {b"batch_label": b"testing batch", b"labels": list(labels),
             b"data": images.reshape(len(images), -1), b"filenames": [b"img%d.png" % i for i in range(len(images))]}
    batch.update(extra or {})
    path.write_bytes(pickle.dumps(batch, protocol=protocol))


def make_cifar_dir(folder: Path, per_batch: int = 3, *, seed: int = 0, meta: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    xs, ys = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8)
        y = rng.integers(0, 10, per_batch)
        write_cifar_batch(folder / name, x, [int(v) for v in y])
        xs.append(x)
        ys.append(y)
    if meta:
        names = [b"plane", b"car", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
        (folder / "batches.meta").write_bytes(pickle.dumps({b"num_cases_per_batch": per_batch, b"label_names": names,
                                                            b"num_vis": 3072}, protocol=2))
    return {"train_x": np.concatenate(xs[:5]), "train_y": np.concatenate(ys[:5]), "test_x": xs[5], "test_y": ys[5]}


def assert_exact_scale(x: torch.Tensor, k: np.ndarray, full_scale: int) -> None:
    """``x`` is exactly the float32 ``k / full_scale`` (one rounding) for the integers ``k``."""
    expected = torch.from_numpy(k.astype(np.float32) / np.float32(full_scale))
    assert x.dtype == torch.float32
    assert torch.equal(x, expected)


# --------------------------------------------------------------------------- registry and names
def test_names():
    assert DATASETS == ("cifar10", "digits", "fashion-mnist", "mnist")
    assert dataset_names() == list(DATASETS)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError) as info:
        load_dataset("foo")
    assert str(info.value) == "Unknown dataset 'foo'. Known datasets: cifar10, digits, fashion-mnist, mnist."
    with pytest.raises(TypeError, match="'name' argument of load_dataset must be a str"):
        load_dataset(3)


@pytest.mark.parametrize("bad, exc", [(0, ValueError), (-1, ValueError), (2.5, TypeError), (True, TypeError),
                                      ("10", TypeError)])
def test_bad_limits(bad, exc):
    with pytest.raises(exc, match="'limit_train' argument of load_dataset must be a positive integer or None"):
        load_dataset("digits", limit_train=bad)


# --------------------------------------------------------------------------- digits
def test_digits_shapes_values_and_split():
    ds = load_dataset("digits")
    assert ds.name == "digits" and ds.num_classes == 10 and ds.input_shape == (1, 8, 8)
    assert ds.classes == tuple("0123456789")
    assert ds.train_x.shape == (1438, 1, 8, 8) and ds.test_x.shape == (359, 1, 8, 8)
    assert ds.train_y.dtype == torch.int64 and ds.train_y.shape == (1438,)
    for x in (ds.train_x, ds.test_x):
        k = (x * 16).round()
        assert k.min() >= 0 and k.max() <= 16
        assert_exact_scale(x, k.numpy().astype(np.uint8), 16)
    assert ds.train_x.max() == 1.0 and ds.train_x.min() == 0.0
    json.dumps(ds.preprocessing)
    assert ds.preprocessing["scale"] == "x/16" and ds.preprocessing["split"]["seed"] == 0


def test_digits_split_is_fixed_stratified_and_complete():
    from sklearn.datasets import load_digits

    a, b = load_dataset("digits"), load_dataset("digits")
    for name in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    # Integer largest-remainder allocation of 359 test images over the class counts.
    assert a.test_y.bincount().tolist() == [36, 36, 35, 37, 36, 36, 36, 36, 35, 36]
    bunch = load_digits()
    images, labels = D._read_digits()  # the fast path reads the same file load_digits does
    np.testing.assert_array_equal(images, bunch.images.astype(np.uint8))
    np.testing.assert_array_equal(labels, bunch.target)
    assert np.array_equal(bunch.images, bunch.images.astype(np.uint8))
    total = a.train_y.bincount() + a.test_y.bincount()
    assert total.tolist() == np.bincount(bunch.target).tolist()
    # Every image lands in exactly one part (images compared as byte rows, with multiplicity).
    rows = sorted(r.tobytes() for r in bunch.images.astype(np.uint8).reshape(len(bunch.images), -1))
    ours = torch.cat([a.train_x, a.test_x]).mul(16).round().to(torch.uint8).reshape(1797, -1).numpy()
    assert sorted(r.tobytes() for r in ours) == rows
    # The split itself: golden so a change of the seeded draw is noticed (it would move test accuracies).
    _, _, train_idx, test_idx = D._digits_arrays()
    assert (int(test_idx.sum()), int(test_idx[:5].sum())) == GOLDEN_DIGITS_TEST


GOLDEN_DIGITS_TEST = (324981, 56)  # sum of all test indices, of the first five ([5, 9, 12, 14, 16])


def test_digits_limits_take_the_first_images():
    full = load_dataset("digits")
    ds = load_dataset("digits", data_dir="/ignored/for/digits", limit_train=100, limit_test=7)
    assert ds.train_x.shape[0] == 100 and ds.test_x.shape[0] == 7
    assert torch.equal(ds.train_x, full.train_x[:100]) and torch.equal(ds.test_y, full.test_y[:7])
    assert load_dataset("digits", limit_test=10**6).test_x.shape[0] == 359
    assert load_dataset("DIGITS").name == "digits"


def test_tensors_are_fresh_and_files_cached(tmp_path):
    a = load_dataset("digits")
    a.train_x.zero_()
    a.train_y.fill_(3)
    b = load_dataset("digits")
    assert b.train_x.max() == 1.0 and b.train_y.bincount().shape[0] == 10
    make_idx_dir(tmp_path)
    first = load_dataset("mnist", tmp_path)
    hits = D._read_idx_cached.cache_info().hits
    first.test_x.fill_(0.5)
    second = load_dataset("mnist", tmp_path)
    assert D._read_idx_cached.cache_info().hits == hits + 4  # the four files come from the cache
    assert not torch.equal(first.test_x, second.test_x) and second.test_x.max() <= 1.0


# --------------------------------------------------------------------------- validation_split
def test_validation_split_reproducible_disjoint_stratified():
    ds = load_dataset("digits")
    tx, ty, vx, vy = ds.validation_split(0.1, seed=3)
    tx2, ty2, vx2, vy2 = ds.validation_split(0.1, seed=3)
    assert torch.equal(vx, vx2) and torch.equal(vy, vy2) and torch.equal(tx, tx2) and torch.equal(ty, ty2)
    assert vx.shape[0] == round(0.1 * 1438) and tx.shape[0] + vx.shape[0] == 1438
    assert tx.shape[1:] == (1, 8, 8) and vy.dtype == torch.int64
    # Disjoint and complete: the rows of both parts are exactly the training rows.
    keep, val = D._stratified_split(ds.train_y.numpy(), 0.1, np.random.default_rng(3))
    assert np.intersect1d(keep, val).size == 0 and np.union1d(keep, val).tolist() == list(range(1438))
    assert torch.equal(vx, ds.train_x[torch.from_numpy(val)]) and torch.equal(ty, ds.train_y[torch.from_numpy(keep)])
    # Stratified: each class gives its share, within one image.
    share = ds.train_y.bincount().double() * 0.1
    assert (vy.bincount(minlength=10).double() - share).abs().max() < 1
    assert not np.array_equal(val, D._stratified_split(ds.train_y.numpy(), 0.1, np.random.default_rng(4))[1])
    gen_a = ds.validation_split(0.25, seed=np.random.default_rng(9))
    gen_b = ds.validation_split(0.25, seed=np.random.default_rng(9))
    assert torch.equal(gen_a[2], gen_b[2]) and gen_a[2].shape[0] == round(0.25 * 1438)


@pytest.mark.parametrize("fraction, exc", [(0, ValueError), (1, ValueError), (-0.1, ValueError), (1.5, ValueError),
                                           ("0.1", TypeError), (None, TypeError)])
def test_validation_split_rejects_bad_fraction(fraction, exc):
    ds = load_dataset("digits", limit_train=50, limit_test=5)
    with pytest.raises(exc, match=r"'fraction' argument of Dataset\.validation_split must be a finite number within \(0, 1\)"):
        ds.validation_split(fraction)
    with pytest.raises(ValueError, match="'seed' argument"):
        ds.validation_split(0.1, seed=-1)


def test_stratified_split_counts_are_exact():
    y = np.repeat(np.arange(3), [50, 30, 20])
    keep, pick = D._stratified_split(y, 0.1, np.random.default_rng(0))
    assert np.bincount(y[pick]).tolist() == [5, 3, 2] and keep.size == 90
    # Tiny fractions still pick one image, and never all of them.
    assert D._stratified_split(y, 1e-6, np.random.default_rng(0))[1].size == 1


# --------------------------------------------------------------------------- IDX (MNIST, Fashion-MNIST)
@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_loader(tmp_path, gz, name):
    arrays = make_idx_dir(tmp_path, gz=gz)
    ds = load_dataset(name, tmp_path)
    assert ds.name == name and ds.input_shape == (1, 28, 28) and ds.num_classes == 10
    assert ds.train_x.shape == (20, 1, 28, 28) and ds.test_x.shape == (10, 1, 28, 28)
    assert_exact_scale(ds.train_x, arrays["train_x"][:, None], 255)
    assert_exact_scale(ds.test_x, arrays["test_x"][:, None], 255)
    assert ds.train_y.dtype == torch.int64 and ds.train_y.tolist() == arrays["train_y"].tolist()
    assert ds.test_y.tolist() == arrays["test_y"].tolist()
    assert ds.train_x[0, 0, 0, 0] == 0.0 and ds.train_x[0, 0, 0, 1] == 1.0
    assert ds.classes[0] == ("T-shirt/top" if name == "fashion-mnist" else "0")
    json.dumps(ds.preprocessing)
    assert ds.preprocessing["scale"] == "x/255"
    assert ds.preprocessing["files"]["train-images-idx3-ubyte"] == "train-images-idx3-ubyte" + (".gz" if gz else "")
    small = load_dataset(name, str(tmp_path), limit_train=4, limit_test=3)
    assert torch.equal(small.train_x, ds.train_x[:4]) and torch.equal(small.test_y, ds.test_y[:3])


def test_idx_other_spellings_and_layouts(tmp_path):
    dotted = tuple(n.replace("-idx", ".idx") for n in IDX_NAMES)
    arrays = make_idx_dir(tmp_path / "a", names=dotted)
    assert load_dataset("mnist", tmp_path / "a").train_y.tolist() == arrays["train_y"].tolist()
    arrays = make_idx_dir(tmp_path / "b" / "FashionMNIST" / "raw", gz=True, seed=1)
    ds = load_dataset("fashion_mnist", tmp_path / "b")
    assert ds.name == "fashion-mnist" and ds.test_y.tolist() == arrays["test_y"].tolist()


def test_read_idx_roundtrip_and_copy(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    for gz in (False, True):
        path = write_idx(tmp_path / f"x{gz}", arr, gz=gz)
        got = read_idx(path, magic=D.IDX_IMAGES_MAGIC)
        np.testing.assert_array_equal(got, arr)
        got[0, 0, 0] = 99  # a copy: the cache is untouched
        assert read_idx(path)[0, 0, 0] == 0
    with pytest.raises(ValueError, match=r"not an IDX label file: the magic number is 2051, expected 2049"):
        read_idx(tmp_path / "xFalse", magic=D.IDX_LABELS_MAGIC)


def _corrupt(folder: Path, kind: str) -> str:
    """Damage one file of a good IDX folder; return the file name the error must name."""
    rng = np.random.default_rng(0)
    if kind == "magic":
        write_idx(folder / "train-images-idx3-ubyte", rng.integers(0, 256, (20, 28, 28), dtype=np.uint8), magic=1234)
        return "train-images-idx3-ubyte"
    if kind == "truncated":
        path = folder / "t10k-images-idx3-ubyte"
        path.write_bytes(path.read_bytes()[:-5])
        return "t10k-images-idx3-ubyte"
    if kind == "short-header":
        (folder / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00")
        return "t10k-labels-idx1-ubyte"
    if kind == "count":
        write_idx(folder / "train-labels-idx1-ubyte", np.zeros(19, dtype=np.uint8))
        return "train-labels-idx1-ubyte"
    if kind == "labels-as-images":
        write_idx(folder / "train-images-idx3-ubyte", np.zeros(20, dtype=np.uint8))
        return "train-images-idx3-ubyte"
    if kind == "label-range":
        write_idx(folder / "t10k-labels-idx1-ubyte", np.full(10, 10, dtype=np.uint8))
        return "t10k-labels-idx1-ubyte"
    if kind == "size":
        write_idx(folder / "t10k-images-idx3-ubyte", np.zeros((10, 32, 32), dtype=np.uint8))
        return "t10k-images-idx3-ubyte"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind, message", [
    ("magic", r"not an unsigned-byte IDX file: the magic number is 1234 \(0x000004d2\), expected 2051 for images or 2049 for labels"),
    ("truncated", "truncated: the IDX header gives dimensions 10 x 28 x 28, so 7856 bytes, but the file has 7851"),
    ("short-header", "truncated IDX header"),
    ("count", "holds 20 images but .* holds 19 labels"),
    ("labels-as-images", "not an IDX image file: the magic number is 2049, expected 2051"),
    ("label-range", "labels must be 0..9, found 10"),
    ("size", "images are 32 x 32, expected 28 x 28"),
])
def test_idx_corrupt_files_name_the_file(tmp_path, kind, message):
    make_idx_dir(tmp_path)
    filename = _corrupt(tmp_path, kind)
    with pytest.raises(ValueError, match=message) as info:
        load_dataset("fashion-mnist", tmp_path)
    text = str(info.value)
    assert str(tmp_path / filename) in text and "Malformed Fashion-MNIST file" in text
    assert "apt-get install dataset-fashion-mnist" in text and "\n" not in text


def test_idx_damaged_gzip(tmp_path):
    make_idx_dir(tmp_path, gz=True)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(ValueError, match="damaged gzip file") as info:
        load_dataset("mnist", tmp_path)
    assert str(path) in str(info.value) and "MNIST database" in str(info.value)


def test_idx_file_replaced_on_disk_is_read_again(tmp_path):
    make_idx_dir(tmp_path, seed=0)
    first = load_dataset("mnist", tmp_path).train_y
    path = tmp_path / "train-labels-idx1-ubyte"
    new = (np.arange(20) % 10).astype(np.uint8)
    write_idx(path, new)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert load_dataset("mnist", tmp_path).train_y.tolist() == new.tolist() != first.tolist()


def test_missing_directory_and_files(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    monkeypatch.setitem(D.DEFAULT_DATA_DIRS, "fashion-mnist", str(missing))
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("fashion-mnist")
    text = str(info.value)
    assert str(missing) in text and "does not exist" in text
    assert "Install Debian's package dataset-fashion-mnist (apt-get install dataset-fashion-mnist)" in text
    assert "--data-dir" in text

    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("fashion-mnist", tmp_path / "empty")
    assert str(info.value).startswith(
        f"Fashion-MNIST files not found in {tmp_path / 'empty'}: expected train-images-idx3-ubyte(.gz), "
        "train-labels-idx1-ubyte(.gz), t10k-images-idx3-ubyte(.gz), t10k-labels-idx1-ubyte(.gz). "
        "Install Debian's package dataset-fashion-mnist"
    )
    make_idx_dir(tmp_path / "partial")
    (tmp_path / "partial" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match=r"expected t10k-labels-idx1-ubyte\(\.gz\)\. "):
        load_dataset("mnist", tmp_path / "partial")
    with pytest.raises(FileNotFoundError, match=r"MNIST needs data_dir \(--data-dir\)"):
        load_dataset("mnist")
    with pytest.raises(FileNotFoundError, match=r"CIFAR-10 needs data_dir \(--data-dir\).*cifar-10-python\.tar\.gz"):
        load_dataset("cifar10")
    with pytest.raises(FileNotFoundError, match="CIFAR-10 data directory .* does not exist"):
        load_dataset("cifar10", missing)


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason=f"{FASHION_DIR} absent: install Debian's package dataset-fashion-mnist")
def test_fashion_mnist_for_real():
    ds = load_dataset("fashion-mnist")
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert ds.train_y.bincount().tolist() == [6000] * 10 and ds.test_y.bincount().tolist() == [1000] * 10
    assert ds.classes == D.FASHION_MNIST_CLASSES and ds.preprocessing["data_dir"] == str(FASHION_DIR)
    k = (ds.test_x * 255).round()
    assert_exact_scale(ds.test_x, k.numpy().astype(np.uint8), 255)
    assert ds.train_x.min() == 0.0 and ds.train_x.max() == 1.0


# --------------------------------------------------------------------------- CIFAR-10
@pytest.mark.parametrize("nested", [False, True])
def test_cifar_loader_both_layouts(tmp_path, nested):
    folder = tmp_path / "cifar-10-batches-py" if nested else tmp_path
    arrays = make_cifar_dir(folder)
    ds = load_dataset("cifar10", tmp_path)
    assert ds.name == "cifar10" and ds.input_shape == (3, 32, 32) and ds.num_classes == 10
    assert ds.train_x.shape == (15, 3, 32, 32) and ds.test_x.shape == (3, 3, 32, 32)
    assert_exact_scale(ds.train_x, arrays["train_x"], 255)
    assert_exact_scale(ds.test_x, arrays["test_x"], 255)
    assert ds.train_y.tolist() == arrays["train_y"].tolist() and ds.test_y.dtype == torch.int64
    assert ds.classes[:2] == ("plane", "car")  # from batches.meta
    assert ds.preprocessing["data_dir"] == str(folder)
    json.dumps(ds.preprocessing)
    small = load_dataset("cifar10", folder, limit_train=4, limit_test=1)
    assert torch.equal(small.train_x, ds.train_x[:4]) and small.test_x.shape[0] == 1


def test_cifar_channel_major_layout(tmp_path):
    make_cifar_dir(tmp_path, meta=False)
    row = np.zeros((1, 3072), dtype=np.uint8)
    row[0, 1024 * 2 + 32 * 5 + 7] = 200  # blue channel, row 5, column 7
    write_cifar_batch(tmp_path / "test_batch", row, [4])
    ds = load_dataset("cifar10", tmp_path)
    assert ds.classes == D.CIFAR10_CLASSES  # no batches.meta: the standard names
    assert ds.test_x[0, 2, 5, 7] == np.float32(200) / np.float32(255) and ds.test_x.sum() == ds.test_x[0, 2, 5, 7]


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_pickles_of_any_protocol_and_python2_numpy_names(tmp_path, protocol):
    arrays = make_cifar_dir(tmp_path)
    images = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3, 32, 32)
    write_cifar_batch(tmp_path / "test_batch", images, [1, 2], protocol=protocol)
    path = tmp_path / "data_batch_1"
    raw = pickle.dumps({b"data": arrays["train_x"][:3].reshape(3, -1), b"labels": [int(v) for v in arrays["train_y"][:3]]}, protocol=2)
    path.write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))  # as numpy 1 wrote them
    ds = load_dataset("cifar10", tmp_path)
    assert_exact_scale(ds.test_x, images, 255)
    assert_exact_scale(ds.train_x, arrays["train_x"], 255)


def _py2_pickle_batch(images: np.ndarray, labels: list[int]) -> bytes:
    """A batch pickled the way Python 2's cPickle wrote the real CIFAR-10 files (protocol 2).

    Python 2 strings are BINSTRING opcodes (read back as bytes with encoding='bytes'), and numpy 1
    pickled arrays through numpy.core.multiarray._reconstruct with a (3, '|', ...) dtype state.
    """
    def string(b: bytes) -> bytes:
        return (b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + len(b).to_bytes(4, "little")) + b

    def small_int(v: int) -> bytes:
        return b"K" + bytes([v]) if v < 256 else b"M" + v.to_bytes(2, "little")

    n, width = images.shape[0], 3072
    array = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + string(b"b") + b"\x87R"
             + b"(K\x01" + small_int(n) + small_int(width) + b"\x86"
             + b"cnumpy\ndtype\n" + string(b"u1") + b"K\x00K\x01\x87R(K\x03" + string(b"|")
             + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
             + b"\x89" + string(images.reshape(n, width).tobytes()) + b"tb")
    label_list = b"](" + b"".join(small_int(v) for v in labels) + b"e"
    return (b"\x80\x02}(" + string(b"batch_label") + string(b"testing batch 1 of 1") + string(b"labels") + label_list
            + string(b"data") + array + string(b"filenames") + b"](" + string(b"a.png") + b"eu.")


def test_cifar_reads_a_python2_cpickle(tmp_path):
    make_cifar_dir(tmp_path)
    images = np.random.default_rng(5).integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)
    (tmp_path / "test_batch").write_bytes(_py2_pickle_batch(images, [7, 3]))
    ds = load_dataset("cifar10", tmp_path)
    assert_exact_scale(ds.test_x, images, 255)
    assert ds.test_y.tolist() == [7, 3]


class _Evil:
    def __reduce__(self):
        return (os.makedirs, ("/tmp/should-not-exist-sysarray-cifar",))


def test_cifar_refuses_foreign_globals(tmp_path):
    make_cifar_dir(tmp_path)
    write_cifar_batch(tmp_path / "data_batch_3", np.zeros((1, 3, 32, 32), np.uint8), [0], extra={b"x": _Evil()})
    with pytest.raises(ValueError, match=r"data_batch_3: not a readable CIFAR-10 python batch .*refusing to load .*makedirs"):
        load_dataset("cifar10", tmp_path)
    assert not Path("/tmp/should-not-exist-sysarray-cifar").exists()


@pytest.mark.parametrize("batch, message", [
    ([1, 2], "must be a dict with keys b'data' and b'labels'. Got a list instead"),
    ({b"data": np.zeros((1, 3072), np.uint8)}, "must have keys b'data' and b'labels'"),
    ({b"data": np.zeros((1, 3072), np.float32), b"labels": [0]}, r"b'data' must be a uint8 array N x 3072 .*Got float32 \(1, 3072\)"),
    ({b"data": np.zeros((1, 1024), np.uint8), b"labels": [0]}, r"Got uint8 \(1, 1024\)"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "b'labels' must be 2 integers"),
    ({b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]}, r"b'labels' must be 0..9. Got 10..10"),
    ("garbage", None),
])
def test_cifar_malformed_batch(tmp_path, batch, message):
    make_cifar_dir(tmp_path)
    path = tmp_path / "data_batch_2"
    if message is None:
        path.write_bytes(b"not a pickle at all")
        message = "not a readable CIFAR-10 python batch"
    else:
        path.write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(ValueError, match=message) as info:
        load_dataset("cifar10", tmp_path)
    assert str(path) in str(info.value) and "cifar-10-python.tar.gz" in str(info.value)


def test_cifar_missing_batches(tmp_path):
    make_cifar_dir(tmp_path)
    (tmp_path / "data_batch_4").unlink()
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("cifar10", tmp_path)
    text = str(info.value)
    assert "missing in" in text and "data_batch_4" in text and "cifar-10-batches-py" in text and "--data-dir" in text


def test_cifar_bad_meta(tmp_path):
    make_cifar_dir(tmp_path)
    (tmp_path / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"a"]}, protocol=2))
    with pytest.raises(ValueError, match=r"batches.meta: b'label_names' must be a list of 10 names"):
        load_dataset("cifar10", tmp_path)


# --------------------------------------------------------------------------- the Dataset object
def test_dataset_checks_its_fields():
    x, y = torch.zeros(4, 1, 2, 2), torch.zeros(4, dtype=torch.int64)
    ok = dict(name="t", train_x=x, train_y=y, test_x=x, test_y=y, num_classes=2, input_shape=(1, 2, 2), classes=["a", "b"])
    ds = Dataset(**ok)
    assert ds.classes == ("a", "b") and ds.describe()["train_size"] == 4
    assert "train=(4, 1, 2, 2)" in repr(ds)
    with pytest.raises(AttributeError):
        ds.name = "other"
    with pytest.raises(ValueError, match="'train_x' argument of Dataset must be a float32 tensor N x 1 x 2 x 2. Got torch.float64"):
        Dataset(**{**ok, "train_x": x.double()})
    with pytest.raises(ValueError, match="'test_y' argument of Dataset must be an int64 tensor of 4 labels"):
        Dataset(**{**ok, "test_y": y[:3]})
    with pytest.raises(ValueError, match=r"'train_y' argument of Dataset must hold labels 0..1. Got 0..2"):
        Dataset(**{**ok, "train_y": torch.tensor([0, 1, 2, 0])})
    with pytest.raises(ValueError, match=r"'test_x' argument of Dataset must hold values in \[0, 1\]"):
        Dataset(**{**ok, "test_x": x + 2})
    with pytest.raises(ValueError, match="'classes' argument of Dataset must name 2 classes"):
        Dataset(**{**ok, "classes": ["a"]})
