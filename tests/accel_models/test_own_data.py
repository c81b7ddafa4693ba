"""A user's own data through ``load_dataset``: ``.npz`` files and image folders, their splits,
scaling and preprocessing records, and one clear error for every malformed input."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from accel_models.data import clear_cache, load_dataset
from accel_models.own_data import OWN_SPLIT_SEED, OWN_TEST_FRACTION


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def _images(n=30, shape=(6, 6), seed=0, classes=3):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8), np.arange(n) % classes


# --------------------------------------------------------------------------- .npz
def test_npz_with_the_default_split(tmp_path):
    x, y = _images()
    path = _npz(tmp_path / "d.npz", x=x, y=y, classes=np.array(["a", "b", "c"]))
    ds = load_dataset(str(path))
    assert ds.name == str(path.resolve()) and ds.input_shape == (1, 6, 6) and ds.classes == ("a", "b", "c")
    assert len(ds.train_x) == 24 and len(ds.test_x) == 6
    assert sorted(ds.test_y.tolist()) == [0, 0, 1, 1, 2, 2]  # stratified
    rows = _rows(ds.train_x, x)
    assert (np.diff(rows) > 0).all() and set(rows).isdisjoint(_rows(ds.test_x, x))  # file order kept, no overlap
    assert torch.equal(ds.train_x, torch.from_numpy(x[rows][:, None].astype(np.float32) / 255))  # exactly k/255
    pre = ds.preprocessing
    assert pre["source"] == "npz" and pre["scale"] == "x/255" and pre["file_layout"] == "N x H x W (one channel)"
    assert pre["split"] == {"method": "stratified", "test_fraction": OWN_TEST_FRACTION, "seed": OWN_SPLIT_SEED}
    assert len(pre["sha256"]) == 64 and pre["dtype"] == "float32" and pre["layout"] == "NCHW"
    again = load_dataset(path)  # a Path works too, and the split is the same every time
    assert torch.equal(again.test_y, ds.test_y) and torch.equal(again.test_x, ds.test_x)
    again.train_x.zero_()  # fresh tensors: nobody else sees the change
    assert load_dataset(path).train_x.max() > 0


def _rows(images, x):
    """The rows of ``x`` (uint8 N x H x W) that ``images`` (float N x 1 x H x W) hold, by content."""
    where = {bytes(r): i for i, r in enumerate(x.reshape(len(x), -1))}
    codes = images.mul(255).round().to(torch.uint8).numpy().reshape(len(images), -1)
    return np.array([where[bytes(r)] for r in codes])


def test_npz_explicit_splits_limits_and_channels(tmp_path):
    rng = np.random.default_rng(1)
    xt, xs = rng.integers(0, 256, (10, 3, 4, 5), dtype=np.uint8), rng.integers(0, 256, (4, 3, 4, 5), dtype=np.uint8)
    path = _npz(tmp_path / "s.npz", x_train=xt, y_train=np.arange(10) % 2, x_test=xs, y_test=np.array([1, 0, 1, 0]))
    ds = load_dataset(path, limit_train=7, limit_test=3)
    assert ds.input_shape == (3, 4, 5) and ds.classes == ("0", "1") and ds.num_classes == 2
    assert torch.equal(ds.train_x, torch.from_numpy(xt[:7].astype(np.float32) / 255))
    assert ds.test_y.tolist() == [1, 0, 1] and ds.preprocessing["limit_train"] == 7
    assert ds.preprocessing["split"] == "the file's x_train/x_test arrays"
    x, y = _images(12, classes=2)
    path = _npz(tmp_path / "i.npz", x=x, y=y, train=np.array([0, 1, 2, 3, 5]), test=np.array([11, 4]))
    ds = load_dataset(path)
    assert torch.equal(ds.test_x[:, 0], torch.from_numpy(x[[11, 4]].astype(np.float32) / 255))
    assert len(ds.train_x) == 5 and ds.preprocessing["split"] == "the file's train/test index arrays"


@pytest.mark.parametrize("values, scale", [
    (np.linspace(0, 1, 30 * 36, dtype=np.float32), "none"),
    (np.arange(30 * 36, dtype=np.float64) % 256, "x/255 (float array of whole numbers 0..255)"),
    (np.linspace(-2, 3, 30 * 36), "(x - min) / (max - min) over the whole file"),
])
def test_npz_float_pixels(tmp_path, values, scale):
    x = values.reshape(30, 6, 6)
    ds = load_dataset(_npz(tmp_path / "f.npz", x=x, y=np.arange(30) % 3))
    assert ds.preprocessing["scale"].startswith(scale)
    both = torch.cat([ds.train_x, ds.test_x])
    assert float(both.min()) == 0.0 and float(both.max()) == 1.0
    if scale.startswith("(x"):
        assert ds.preprocessing["min"] == -2.0 and ds.preprocessing["max"] == 3.0


def test_a_name_is_not_a_path_and_a_path_is_not_a_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    x, y = _images()
    _npz(tmp_path / "digits", x=x, y=y)  # np.savez adds .npz: a file named "digits.npz"
    os.replace(tmp_path / "digits.npz", tmp_path / "digits")
    assert load_dataset("digits").input_shape == (1, 8, 8)  # the named dataset wins
    assert load_dataset("./digits").input_shape == (1, 6, 6)
    with pytest.raises(ValueError, match="Unknown dataset 'imagenet'"):
        load_dataset("imagenet")
    with pytest.raises(FileNotFoundError, match="Dataset path 'missing.npz' does not exist; expected a dataset name, an .npz"):
        load_dataset("missing.npz")


def _bad_npz_cases():
    x, y = _images()
    cls = np.array(["a", "b", "c"])
    return [
        ({"x": x[:, 0], "y": y}, "'x' array", "images N x C x H x W or N x H x W, uint8"),
        ({"x": x.astype(bool), "y": y}, "'x' array", "Got bool (30, 6, 6) instead"),
        ({"x": x.astype(np.int64) + 1, "y": y}, "'x' array", "8-bit pixel values 0..255 (an integer array is scaled x/255). Got values 1..256"),
        ({"x": np.where(np.arange(30)[:, None, None] == 7, np.nan, x / 255.0), "y": y}, "'x' array",
         "finite numbers (no NaN or infinity). Got 1 image(s) with NaN or infinity, the first at index 7 instead"),
        ({"x": np.full((30, 6, 6), 7.5), "y": y}, "'x' images", "Got every value 7.5 instead"),
        ({"x": x, "y": y.astype(np.float32)}, "'y' array", "30 integer labels"),
        ({"x": x, "y": y[:-1]}, "'y' array", "30 labels, one per image of 'x'. Got 29 labels instead"),
        ({"x": x, "y": y - 1}, "'y' array", "labels >= 0. Got label -1 instead"),
        ({"x": x, "y": y, "classes": cls[:2]}, "labels", "within 0..1 (one per name in 'classes'). Got label 2 instead"),
        ({"x": x, "y": np.where(y == 1, 2, y)}, "training split", "images of every class 0..2. Got no training image of class 1"),
        ({"x": x, "y": np.zeros(30, int)}, "labels", "at least 2 classes. Got 1 class instead"),
        ({"x": x, "y": y, "labels": y}, "arrays", "named from x, y, train, test, x_train"),
        ({"x": x, "y": y, "x_train": x}, "arrays", "either x, y (with optional train, test indices) or x_train"),
        ({"x_train": x, "y_train": y, "x_test": x}, "arrays", "together. Got no y_test instead"),
        ({"x_train": x, "y_train": y, "x_test": x[:, :4], "y_test": y}, "'x_test' images", "6 x 6 like 'x_train'"),
        ({"x_train": x, "y_train": y, "x_test": x / 255.0, "y_test": y}, "'x_test' array", "both integer or both float"),
        ({"x": x, "y": y, "train": np.arange(20)}, "arrays", "'train' and 'test' index arrays together. Got only 'train'"),
        ({"x": x, "y": y, "train": np.arange(20), "test": np.arange(19, 30)}, "'train' and 'test' indices",
         "disjoint. Got 1 image(s) in both, e.g. 19 instead"),
        ({"x": x, "y": y, "train": np.arange(20), "test": np.array([25, 30])}, "'test' array", "indices within 0..29. Got 25..30"),
        ({"x": x, "y": y, "train": np.array([0, 1, 2, 1]), "test": np.array([29])}, "'train' array", "indices without repeats"),
        ({"x": x, "y": y, "train": np.array([], int), "test": np.array([29])}, "'train' array", "a non-empty 1-d int array"),
        ({"x": x, "y": y, "classes": np.array(["a", "a", "b"])}, "'classes' array", "distinct non-empty names"),
        ({"x": x, "y": y, "classes": np.array([1, 2, 3])}, "'classes' array", "a 1-d array of class names (str)"),
        ({"x": x, "y": y, "classes": np.array(["a", 1, "c"], dtype=object)}, "arrays",
         "plain numeric or str arrays (the file is read with allow_pickle=False)"),
        ({"x": x[:1], "y": y[:1]}, "'x' array", "at least 2 images to split into train and test"),
    ]


@pytest.mark.parametrize("arrays, what, message", _bad_npz_cases())
def test_npz_errors_say_what_and_what_is_expected(tmp_path, arrays, what, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError) as info:
        load_dataset(path)
    text = str(info.value)
    assert text.startswith(f"The {what} of dataset file '{path.resolve()}' must be"), text
    assert message in text and "\n" not in text


def test_files_that_are_not_npz_archives(tmp_path):
    text = tmp_path / "notes.npz"
    text.write_text("hello")
    with pytest.raises(ValueError, match="must be an .npz archive written by numpy.savez with arrays x and y. Got an unreadable"):
        load_dataset(text)
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    with pytest.raises(ValueError, match="must be an .npz archive .*Got a single .npy array instead"):
        load_dataset(single)


def test_a_file_replaced_on_disk_is_read_again(tmp_path):
    x, y = _images()
    path = _npz(tmp_path / "d.npz", x=x, y=y)
    first = load_dataset(path)
    np.savez(path, x=255 - x, y=y)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert not torch.equal(load_dataset(path).train_x, first.train_x)
    clear_cache()
    assert load_dataset(path).train_x.shape == first.train_x.shape


# --------------------------------------------------------------------------- image folders
def _save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path) if mode else Image.fromarray(array).save(path)


def _folder(root, classes=("cat", "dog"), per_class=5, shape=(5, 4), split=False, seed=0):
    rng = np.random.default_rng(seed)
    parts = ("train", "test") if split else ("",)
    for part in parts:
        for c in classes:
            for i in range(per_class):
                _save(root / part / c / f"{i:02d}.png", rng.integers(0, 256, shape, dtype=np.uint8))
    return root


def test_image_folder_with_the_default_split(tmp_path):
    root = _folder(tmp_path / "imgs")
    (root / ".hidden").mkdir()
    (root / "README.txt").write_text("ignored: not an image, not a folder")
    (root / "cat" / ".DS_Store").write_bytes(b"skipped")
    ds = load_dataset(root)
    assert ds.classes == ("cat", "dog") and ds.input_shape == (1, 5, 4) and ds.name == str(root.resolve())
    assert len(ds.train_x) == 8 and sorted(ds.test_y.tolist()) == [0, 1]
    first = np.asarray(Image.open(root / "cat" / "00.png"), dtype=np.float32) / 255
    assert any(torch.equal(img[0], torch.from_numpy(first)) for img in torch.cat([ds.train_x, ds.test_x]))
    assert ds.preprocessing["source"] == "image folder" and ds.preprocessing["channels"] == "grayscale"
    assert ds.preprocessing["split"]["method"] == "stratified"


def test_image_folder_train_test_layout_and_colour(tmp_path):
    root = _folder(tmp_path / "imgs", per_class=3, split=True)
    _save(root / "test" / "cat" / "colour.jpg", np.full((5, 4, 3), 200, np.uint8))
    (root / "test" / "dog").rename(root / "test" / "dog-gone")  # a test class the training split lacks
    with pytest.raises(ValueError, match=r"The 'test/' class folders of dataset folder .* must be among the training classes \(cat, dog\). Got dog-gone"):
        load_dataset(root)
    (root / "test" / "dog-gone").rename(root / "test" / "dog")
    ds = load_dataset(root)
    assert ds.input_shape == (3, 5, 4) and len(ds.train_x) == 6 and len(ds.test_x) == 7
    assert ds.preprocessing["split"] == "the folder's train/ and test/ subfolders"
    assert ds.preprocessing["channels"].startswith("RGB")
    gray = ds.train_x[0]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])  # grey repeated in three channels
    assert (ds.test_x.mul(255).round() == 200).all(dim=(1, 2, 3)).sum() == 1


@pytest.mark.parametrize("damage, what, message", [
    (lambda r: _save(r / "dog" / "big.png", np.zeros((6, 4), np.uint8)), "image 'dog/big.png'",
     "4 x 5 pixels like 'cat/00.png' (every image the same size; nothing is resized). Got 4 x 6 instead"),
    (lambda r: (r / "bird").mkdir(), "class folder 'bird/'", "at least one image. Got an empty folder instead"),
    (lambda r: (r / "cat" / "notes.txt").write_text("x"), "entry 'cat/notes.txt'", "an image file (.png, .jpg, .jpeg)"),
    (lambda r: (r / "cat" / "sub").mkdir(), "entry 'cat/sub'", "Got a folder instead"),
    (lambda r: (r / "cat" / "broken.png").write_bytes(b"not a png"), "image 'cat/broken.png'", "a readable PNG or JPEG file"),
    (lambda r: Image.fromarray(np.zeros((5, 4), np.uint16)).save(r / "cat" / "deep.png"), "image 'cat/deep.png'",
     "an 8-bit grayscale or colour image"),
    (lambda r: _save(r / "loose.png", np.zeros((5, 4), np.uint8)), "images", "in one folder per class"),
    (lambda r: _folder(r / "train"), "subfolders", "exactly train/ and test/"),
])
def test_image_folder_errors(tmp_path, damage, what, message):
    root = _folder(tmp_path / "imgs")
    damage(root)
    with pytest.raises(ValueError) as info:
        load_dataset(root)
    text = str(info.value)
    assert text.startswith(f"The {what} of dataset folder '{root.resolve()}' must be"), text
    assert message in text


def test_image_folder_without_classes(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="must be one folder per class holding its images .*Got no folders"):
        load_dataset(tmp_path / "empty")
    root = _folder(tmp_path / "one", classes=("only",))
    with pytest.raises(ValueError, match="at least 2 classes"):
        load_dataset(root)
