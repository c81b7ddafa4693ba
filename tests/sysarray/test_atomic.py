"""Atomic writes: whole-file replacement, no temporary files left, and the usual permissions."""
from __future__ import annotations

import contextlib
import os
import stat

import pytest

from sysarray.atomic import atomic_write, write_json, write_text


@contextlib.contextmanager
def umask(value):
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_new_files_get_0666_less_the_umask(tmp_path, mask, expected):
    with umask(mask):
        write_text(tmp_path / "a.txt", "x\n")
        write_json(tmp_path / "sub" / "b.json", {"a": 1})
        atomic_write(tmp_path / "c.bin", lambda f: f.write(b"\0"), binary=True)
    for name in ("a.txt", "sub/b.json", "c.bin"):
        assert _mode(tmp_path / name) == expected, name
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "c.bin", "sub"]  # no temporary file left


def test_replacing_a_file_keeps_its_mode_and_an_explicit_mode_wins(tmp_path):
    path = tmp_path / "r.json"
    with umask(0o022):
        write_json(path, {"v": 1})
        os.chmod(path, 0o640)
        write_json(path, {"v": 2})
        assert _mode(path) == 0o640 and path.read_text() == '{\n  "v": 2\n}\n'
        write_text(path, "z")
        atomic_write(path, lambda f: f.write("y"), mode=0o604)
    assert _mode(path) == 0o604 and path.read_text() == "y"
    with pytest.raises(ValueError, match="'mode' argument of atomic_write"):
        atomic_write(path, lambda f: f.write("y"), mode=0o10000)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "keep.txt"
    write_text(path, "old")

    def boom(f):
        f.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, boom)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["keep.txt"]
