"""The fault-map file format: round trips, validation of every kind of bad file, atomic saves."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from numpy.testing import assert_array_equal

import sysarray as sa
from sysarray import faultio
from sysarray.faults import FaultMap


def _map() -> FaultMap:
    return FaultMap(16, 16).add(3, 5, "psum", 30, 1).add(0, 15, "weight", 7, 0).add(15, 0, "act", 0, 1)


def _arrays(fm: FaultMap | None = None, **changes) -> dict:
    """The arrays of a valid file, with ``changes`` applied (a value of None drops the key)."""
    fm = fm or _map()
    arrays = {
        "format": np.array("sysarray-faultmap"),
        "version": np.array(1, dtype=np.int64),
        "rows": np.array(fm.rows, dtype=np.int64),
        "cols": np.array(fm.cols, dtype=np.int64),
        "faults": fm.records,
    }
    arrays.update(changes)
    return {k: v for k, v in arrays.items() if v is not None}


def _write(path, **changes) -> str:
    np.savez(path, **_arrays(**changes))
    return str(path)


# --------------------------------------------------------------------------- round trips
def test_round_trip_with_meta(tmp_path):
    fm = _map()
    path = tmp_path / "chip.npz"
    meta = {"generator": "pe_rate", "seed": 3, "bits": range(24, 32), "rate": np.float64(0.01), "regs": ("psum",)}
    fm.save(path, meta=meta)
    back, got = faultio.load_with_meta(path)
    assert back == fm and back.shape == (16, 16)
    assert got == {"generator": "pe_rate", "seed": 3, "bits": list(range(24, 32)), "rate": 0.01, "regs": ["psum"]}
    assert faultio.read_meta(path) == got
    assert FaultMap.load(path) == fm and FaultMap.load(str(path), rows=16, cols=16, psum_bits=32) == fm


def test_round_trip_without_meta_and_empty(tmp_path):
    for fm in (_map(), FaultMap(3, 7), FaultMap(1, 1).add(0, 0, "psum", 31, 1)):
        path = tmp_path / f"m{fm.rows}x{fm.cols}.npz"
        faultio.save(fm, path)
        assert faultio.load(path) == fm
        assert faultio.read_meta(path) == {}


def test_file_layout_matches_docstring(tmp_path):
    path = tmp_path / "chip.npz"
    _map().save(path, meta={"a": 1})
    with np.load(path) as npz:
        assert sorted(npz.files) == ["cols", "faults", "format", "meta", "rows", "version"]
        assert str(npz["format"]) == "sysarray-faultmap" and int(npz["version"]) == 1
        assert npz["faults"].dtype == np.int64 and npz["faults"].shape == (3, 5)
        assert_array_equal(npz["faults"], _map().records)
        assert json.loads(str(npz["meta"])) == {"a": 1}
        assert npz["rows"].shape == () and int(npz["rows"]) == 16 and int(npz["cols"]) == 16


def test_generated_map_round_trip(tmp_path):
    fm = FaultMap.random(sa.ArrayConfig(32, 32), 0.2, seed=0, faults_per_pe=3)
    path = tmp_path / "g.npz"
    fm.save(path)
    assert FaultMap.load(path) == fm


def test_path_used_as_given(tmp_path):
    path = tmp_path / "chip.faults"
    _map().save(path)
    assert os.listdir(tmp_path) == ["chip.faults"]
    assert FaultMap.load(path) == _map()


def test_save_validates_arguments(tmp_path):
    with pytest.raises(TypeError, match="FaultMap"):
        faultio.save("not a map", tmp_path / "x.npz")
    with pytest.raises(TypeError, match="'meta'.*dict"):
        _map().save(tmp_path / "x.npz", meta=[1, 2])
    with pytest.raises(TypeError, match="JSON"):
        _map().save(tmp_path / "x.npz", meta={"f": object()})
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "d.npz").mkdir()
    with pytest.raises(ValueError, match="'path' argument of FaultMap.save must be a file"):
        _map().save(tmp_path / "d.npz")
    (tmp_path / "f").write_text("")
    with pytest.raises(ValueError, match="parent is a folder"):
        _map().save(tmp_path / "f" / "x.npz")


# --------------------------------------------------------------------------- bad files
def _expect_bad(path, match, **kwargs):
    with pytest.raises(ValueError, match=match) as info:
        faultio.load(path, **kwargs)
    assert str(path) in str(info.value)  # the message names the file
    return info


def test_not_a_zip(tmp_path):
    p = tmp_path / "a.npz"
    p.write_text("hello")
    _expect_bad(p, r"not a \.npz file")
    p = tmp_path / "b.npy"
    np.save(p, np.zeros(3))
    _expect_bad(p, r"not a \.npz file")
    p = tmp_path / "empty.npz"
    p.write_bytes(b"")
    _expect_bad(p, r"not a \.npz file")


def test_truncated_file(tmp_path):
    good = tmp_path / "good.npz"
    _map().save(good)
    data = good.read_bytes()
    p = tmp_path / "cut.npz"
    p.write_bytes(data[: len(data) // 2])
    _expect_bad(p, r"not a \.npz file")


def test_corrupted_member(tmp_path):
    p = tmp_path / "good.npz"
    np.savez(p, **_arrays())  # uncompressed: the .npy bytes lie in the file as is
    data = bytearray(p.read_bytes())
    i = data.index(b"\x93NUMPY", data.index(b"faults.npy"))
    data[i : i + 6] = b"XXXXXX"  # break the member's .npy magic
    bad = tmp_path / "bad.npz"
    bad.write_bytes(bytes(data))
    _expect_bad(bad, "could not be read")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        faultio.load(tmp_path / "nope.npz")
    _expect_bad(tmp_path, "directory")


@pytest.mark.parametrize("key", ["format", "version", "rows", "cols", "faults"])
def test_missing_key(tmp_path, key):
    _expect_bad(_write(tmp_path / "m.npz", **{key: None}), f"missing key.*'{key}'")


def test_unexpected_key(tmp_path):
    _expect_bad(_write(tmp_path / "m.npz", extra=np.zeros(2)), "unexpected key.*'extra'")


def test_pickled_member(tmp_path):
    _expect_bad(_write(tmp_path / "m.npz", meta=np.array([{"a": 1}], dtype=object)), "'meta' could not be read")


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(format=np.array("other-format")), "format is 'other-format'"),
        (dict(format=np.array(["sysarray-faultmap"])), "'format' must be a 0-d string"),
        (dict(format=np.array(1)), "'format' must be a 0-d string"),
        (dict(version=np.array(2)), "version 2 is not supported.*reads version 1"),
        (dict(version=np.array(0)), "version 0 is not supported"),
        (dict(version=np.array(1.0)), "'version' must be a 0-d integer"),
        (dict(version=np.array([1])), "'version' must be a 0-d integer"),
        (dict(rows=np.array(0)), r"'rows' must be within 1\.\."),
        (dict(cols=np.array(-3)), r"'cols' must be within 1\.\."),
        (dict(rows=np.array(16.0)), "'rows' must be a 0-d integer"),
        (dict(cols=np.array("16")), "'cols' must be a 0-d integer"),
        (dict(faults=np.zeros((2, 4), dtype=np.int64)), r"'faults' must be an \(n, 5\) integer array; got shape \(2, 4\)"),
        (dict(faults=np.zeros(5, dtype=np.int64)), r"'faults' must be an \(n, 5\)"),
        (dict(faults=np.zeros((1, 5), dtype=np.float64)), r"'faults'.*dtype float64"),
        (dict(faults=np.zeros((1, 5), dtype=bool)), r"'faults'.*dtype bool"),
        (dict(faults=np.array([[16, 0, 0, 0, 0]])), r"row must be within 0\.\.15. Got 16"),
        (dict(faults=np.array([[0, -1, 0, 0, 0]])), r"col must be within 0\.\.15. Got -1"),
        (dict(faults=np.array([[0, 0, 3, 0, 0]])), r"register code must be within 0\.\.2. Got 3"),
        (dict(faults=np.array([[0, 0, 1, 8, 0]])), r"bit must be within 0\.\.7 for register 'act'. Got 8"),
        (dict(faults=np.array([[0, 0, 2, 32, 0]])), r"bit must be within 0\.\.31 for register 'psum'. Got 32"),
        (dict(faults=np.array([[0, 0, 2, 3, 2]])), r"value must be within 0\.\.1. Got 2"),
        (dict(faults=np.array([[0, 0, 2, 3, 0], [0, 0, 2, 3, 1]])), "cannot be stuck at both 0 and 1"),
        (dict(meta=np.array("{not json")), "'meta' is not valid JSON"),
        (dict(meta=np.array("[1, 2]")), "'meta' must be a JSON object"),
        (dict(meta=np.array(3)), "'meta' must be a 0-d string"),
    ],
)
def test_bad_contents(tmp_path, changes, match):
    _expect_bad(_write(tmp_path / "m.npz", **changes), match)


def test_duplicate_records_are_accepted(tmp_path):
    recs = np.concatenate([_map().records, _map().records])
    assert faultio.load(_write(tmp_path / "m.npz", faults=recs)) == _map()


def test_geometry_and_psum_checks(tmp_path):
    path = tmp_path / "chip.npz"
    _map().save(path)
    info = _expect_bad(path, "the file is for a 16x16 array but the array is 32x32", rows=32, cols=32)
    assert str(info.value) == f"Fault map file '{path}' is not usable: the file is for a 16x16 array but the array is 32x32."
    _expect_bad(path, r"psum fault on bit 30, outside the 20-bit psum register \(bits 0\.\.19\)", psum_bits=20)
    with pytest.raises(ValueError, match="both 'rows' and 'cols'"):
        faultio.load(path, rows=16)
    with pytest.raises(ValueError, match="16x16 array but the array is 16x8"):
        FaultMap.load(path, rows=16, cols=8)


# --------------------------------------------------------------------------- atomic save
def test_save_replaces_existing_file(tmp_path):
    path = tmp_path / "chip.npz"
    _map().save(path)
    other = FaultMap(4, 4).add(1, 1, "act", 1, 1)
    other.save(path, meta={"v": 2})
    assert FaultMap.load(path) == other and faultio.read_meta(path) == {"v": 2}
    assert os.listdir(tmp_path) == ["chip.npz"]


def test_crash_during_save_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "chip.npz"
    _map().save(path, meta={"v": 1})
    before = path.read_bytes()

    def crash(file, **arrays):
        file.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(faultio.np, "savez_compressed", crash)
    with pytest.raises(KeyboardInterrupt):
        FaultMap(4, 4).add(0, 0, "psum", 0, 1).save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["chip.npz"]
    monkeypatch.undo()
    assert FaultMap.load(path) == _map()


def test_crash_before_first_save_leaves_nothing(tmp_path, monkeypatch):
    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(faultio.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        _map().save(tmp_path / "chip.npz")
    assert os.listdir(tmp_path) == []


def test_saved_file_is_readable_by_others(tmp_path):
    path = tmp_path / "chip.npz"
    _map().save(path)
    assert os.stat(path).st_mode & 0o644 == 0o644
