"""``sysarray.validation``: one error format, one seed rule."""
from __future__ import annotations

import enum
import math
import os

import numpy as np
import pytest

from sysarray import validation as v


def test_integers():
    assert v.check_int(np.int64(3), "n", "f", lo=0, hi=5) == 3 and type(v.check_int(np.int64(3), "n", "f")) is int
    assert v.check_int(None, "n", "f", none_ok=True) is None
    with pytest.raises(TypeError, match=r"^The 'n' argument of f must be an integer within 0\.\.5\. Got True instead\.$"):
        v.check_int(True, "n", "f", lo=0, hi=5)
    with pytest.raises(ValueError, match=r"^The 'n' argument of f must be an integer >= 1\. Got 0 instead\.$"):
        v.check_int(0, "n", "f", lo=1)
    with pytest.raises(TypeError, match="a positive integer or None. Got 2.0"):
        v.check_positive_int(2.0, "n", "f", none_ok=True)
    with pytest.raises(ValueError, match="must be a positive integer. Got -1"):
        v.check_positive_int(-1, "n", "f")


def test_floats_and_fractions():
    assert v.check_float(1, "x", "f", lo=0) == 1.0
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="finite number"):
            v.check_float(bad, "x", "f")
    with pytest.raises(TypeError, match="The 'x' argument of f must be a finite number"):
        v.check_float("1", "x", "f")
    with pytest.raises(ValueError, match=r"within \(0, 1\)\. Got 1.0"):
        v.check_fraction(1.0, "x", "f", open_ends=True)
    assert v.check_fraction(0, "x", "f") == 0.0
    with pytest.raises(ValueError, match=r"within \[0, 1\]\. Got 1.5"):
        v.check_fraction(1.5, "x", "f")


def test_one_seed_rule():
    assert v.check_seed(0, "f") == 0 and v.check_seed(np.uint64(2**63), "f") == 2**63
    for bad, err in ((-1, ValueError), (2**64, ValueError), (True, TypeError), (1.0, TypeError), ("1", TypeError)):
        with pytest.raises(err, match="The 'seed' argument of f must be a non-negative integer"):
            v.check_seed(bad, "f")
    g = np.random.default_rng(1)
    assert v.as_rng(g, "f") is g
    assert v.as_rng(5, "f").integers(1 << 30) == np.random.default_rng(5).integers(1 << 30)
    assert v.as_rng(np.random.SeedSequence(5), "f").integers(1 << 30) == np.random.default_rng(5).integers(1 << 30)
    with pytest.raises(TypeError, match="SeedSequence or a numpy Generator"):
        v.as_rng(None, "f")
    with pytest.raises(ValueError, match="non-negative"):
        v.as_rng(-3, "f")


def test_choices_enums_instances_and_sequences():
    class Color(str, enum.Enum):
        RED = "red"

    assert v.check_enum("red", Color, "c", "f") is Color.RED and v.check_enum(Color.RED, Color, "c", "f") is Color.RED
    with pytest.raises(ValueError, match="The 'c' argument of f must be one of red. Got 'blue' instead."):
        v.check_enum("blue", Color, "c", "f")
    with pytest.raises(ValueError, match="one of a, b. Got 'c'"):
        v.check_choice("c", "x", "f", ("a", "b"))
    with pytest.raises(TypeError, match="The 'x' argument of f must be an int or None. Got str instead."):
        v.check_instance("1", int, "x", "f", none_ok=True)
    assert v.check_sequence((1, 2), "x", "f") == [1, 2]
    with pytest.raises(ValueError, match="distinct"):
        v.check_sequence([1, 1], "x", "f", distinct=True)
    with pytest.raises(TypeError, match="a sequence"):
        v.check_sequence("ab", "x", "f")


def test_paths(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("x")
    assert v.check_path(str(f), "p", "f", exists=True, kind="file") == f
    with pytest.raises(FileNotFoundError, match="must be an existing path"):
        v.check_path(tmp_path / "none", "p", "f", exists=True)
    with pytest.raises(ValueError, match="must be a folder"):
        v.check_path(f, "p", "f", kind="dir")
    with pytest.raises(ValueError, match="must be a file"):
        v.check_output_path(tmp_path, "out", "f")
    assert v.check_output_path(tmp_path / "new" / "deeper" / "x.json", "out", "f").name == "x.json"
    with pytest.raises(ValueError, match="parent is a folder"):
        v.check_output_path(f / "x.json", "out", "f")
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(PermissionError, match="writable"):
            v.check_output_path(ro / "x.json", "out", "f")
