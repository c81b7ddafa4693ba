"""FaultMap data model: building, validation, duplicates, conflicts, union, equality, views."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_array_equal

import sysarray as sa
from sysarray.faults import REGISTER_ORDER, Fault, FaultMap, Register, as_register


def test_empty_map():
    fm = FaultMap(4, 6)
    assert fm.shape == (4, 6)
    assert len(fm) == 0 and fm.is_empty and bool(fm)
    assert fm.records.shape == (0, 5) and fm.records.dtype == np.int64
    assert not fm.faulty_pes().any() and fm.faulty_pes().shape == (4, 6)
    assert fm.pe_rate == 0.0 and fm.registers() == ()
    assert fm.max_bit("psum") == -1


def test_add_chains_and_records_are_sorted():
    fm = FaultMap(8, 8).add(5, 1, "psum", 30, 1).add(2, 3, Register.WEIGHT, 7, 0).add(2, 3, "act", 0, 1)
    assert_array_equal(fm.records, [[2, 3, 0, 7, 0], [2, 3, 1, 0, 1], [5, 1, 2, 30, 1]])
    assert list(fm) == [
        Fault(2, 3, Register.WEIGHT, 7, 0),
        Fault(2, 3, Register.ACT, 0, 1),
        Fault(5, 1, Register.PSUM, 30, 1),
    ]
    assert fm.n_faulty_pes == 2 and fm.pe_rate == 2 / 64
    assert fm.registers() == (Register.WEIGHT, Register.ACT, Register.PSUM)


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(row=4, col=0, register="psum", bit=0, value=0), ValueError, r"'row'.*0\.\.3"),
        (dict(row=-1, col=0, register="psum", bit=0, value=0), ValueError, "'row'"),
        (dict(row=0, col=5, register="psum", bit=0, value=0), ValueError, r"'col'.*0\.\.4"),
        (dict(row=0, col=0, register="weight", bit=8, value=0), ValueError, r"'bit'.*weight.*0\.\.7"),
        (dict(row=0, col=0, register="act", bit=-1, value=0), ValueError, "'bit'"),
        (dict(row=0, col=0, register="psum", bit=32, value=0), ValueError, r"0\.\.31"),
        (dict(row=0, col=0, register="psum", bit=0, value=2), ValueError, "'value'"),
        (dict(row=0, col=0, register="accumulator", bit=0, value=0), ValueError, "weight, act, psum"),
        (dict(row=0.5, col=0, register="psum", bit=0, value=0), TypeError, "integer"),
        (dict(row=0, col=0, register="psum", bit=0, value=True), TypeError, "integer"),
    ],
)
def test_add_validates(kwargs, err, match):
    with pytest.raises(err, match=match):
        FaultMap(4, 5).add(**kwargs)


@pytest.mark.parametrize("rows, cols", [(0, 4), (4, 0), (-1, 1)])
def test_geometry_validated(rows, cols):
    with pytest.raises(ValueError):
        FaultMap(rows, cols)


def test_duplicates_kept_once_and_conflicts_refused():
    fm = FaultMap(2, 2).add(0, 1, "act", 3, 1).add(0, 1, "act", 3, 1)
    assert len(fm) == 1
    with pytest.raises(ValueError, match=r"PE \(0, 1\) register 'act' bit 3 cannot be stuck at both 0 and 1"):
        fm.add(0, 1, "act", 3, 0)
    assert len(fm) == 1  # a refused add leaves the map unchanged
    # the same bit in another register or PE is no conflict
    more = fm.add(0, 1, "weight", 3, 0).add(1, 1, "act", 3, 0)
    assert len(more) == 3 and len(fm) == 1


def test_from_records_round_trip_and_validation():
    recs = np.array([[1, 2, 2, 31, 1], [0, 0, 0, 0, 0], [1, 2, 2, 31, 1]])
    fm = FaultMap.from_records(3, 3, recs)
    assert_array_equal(fm.records, [[0, 0, 0, 0, 0], [1, 2, 2, 31, 1]])
    assert FaultMap.from_records(3, 3, fm.records) == fm
    assert FaultMap.from_records(3, 3, []) == FaultMap(3, 3)
    assert FaultMap.from_records(3, 3, [(0, 0, 0, 0, 0), (1, 2, 2, 31, 1)]) == fm
    for bad, match in [
        ([[3, 0, 0, 0, 0]], "row"),
        ([[0, 3, 0, 0, 0]], "col"),
        ([[0, 0, 3, 0, 0]], "register code"),
        ([[0, 0, 0, 8, 0]], "'weight'"),
        ([[0, 0, 2, 32, 0]], "'psum'"),
        ([[0, 0, 0, 0, -1]], "value"),
        ([[0, 0, 0, 0, 0, 0]], r"\(n, 5\)"),
        (np.zeros((1, 5), dtype=float), "integer"),
        ([[0, 0, 0, 1, 0], [0, 0, 0, 1, 1]], "both 0 and 1"),
    ]:
        with pytest.raises(ValueError, match=match):
            FaultMap.from_records(3, 3, np.asarray(bad))


def test_union_equality_hash():
    a = FaultMap(4, 4).add(0, 0, "psum", 1, 1)
    b = FaultMap(4, 4).add(3, 3, "weight", 7, 0).add(0, 0, "psum", 1, 1)
    u = a.union(b)
    assert u == (a | b) == b.union(a)
    assert len(u) == 2 and len(a) == 1  # operands untouched
    assert u == FaultMap(4, 4).add(3, 3, "weight", 7, 0).add(0, 0, "psum", 1, 1)  # order of adds is irrelevant
    assert hash(u) == hash(FaultMap.from_records(4, 4, b.records))
    assert a != b and a != FaultMap(4, 5).add(0, 0, "psum", 1, 1)
    assert (a == "not a map") is False
    assert a.union() == a
    with pytest.raises(ValueError, match="one array size"):
        a.union(FaultMap(4, 5))
    with pytest.raises(TypeError, match="FaultMap"):
        a.union("x")
    with pytest.raises(ValueError, match="both 0 and 1"):
        a.union(FaultMap(4, 4).add(0, 0, "psum", 1, 0))


def test_maps_are_immutable_values():
    """add() returns a new map and leaves the old one as it was; nothing can be set on a map, so its
    hash (by content) never changes while it is a dict key or in a set; pickling keeps it."""
    import pickle

    a = FaultMap(2, 2).add(0, 0, "act", 0, 1)
    h = hash(a)
    c = a.add(1, 1, "act", 0, 1)
    assert len(a) == 1 and len(c) == 2 and hash(a) == h and c != a
    for name in ("rows", "_faults", "anything"):
        with pytest.raises(AttributeError, match="immutable"):
            setattr(a, name, 3)
    with pytest.raises(ValueError, match="read-only"):
        a._faults["bit"][0] = 5
    assert {a: 1}[FaultMap(2, 2).add(0, 0, "act", 0, 1)] == 1
    b = pickle.loads(pickle.dumps(c))
    assert b == c and hash(b) == hash(c) and len(b) == 2
    with pytest.raises(AttributeError, match="immutable"):
        b.rows = 1


def test_faulty_pes_and_rates():
    fm = FaultMap(2, 3).add(0, 1, "psum", 0, 0).add(0, 1, "act", 0, 0).add(1, 2, "weight", 2, 1)
    assert_array_equal(fm.faulty_pes(), [[False, True, False], [False, False, True]])
    assert_array_equal(fm.faulty_pes("psum"), [[False, True, False], [False, False, False]])
    assert_array_equal(fm.faulty_pes(Register.WEIGHT), [[False, False, False], [False, False, True]])
    assert fm.pe_rate == 2 / 6
    assert fm.bit_error_rate() == 3 / (6 * 48)
    assert fm.bit_error_rate(psum_bits=20) == 3 / (6 * 36)


def test_masks():
    fm = (
        FaultMap(2, 2)
        .add(0, 0, "psum", 31, 1)
        .add(0, 0, "psum", 0, 0)
        .add(1, 1, "psum", 5, 1)
        .add(1, 0, "weight", 7, 1)
    )
    stuck, ones = fm.masks("psum")
    assert stuck.dtype == np.int64 and ones.dtype == np.int64
    assert_array_equal(stuck, [[(1 << 31) | 1, 0], [0, 1 << 5]])
    assert_array_equal(ones, [[1 << 31, 0], [0, 1 << 5]])
    stuck, ones = fm.masks("weight")
    assert_array_equal(stuck, [[0, 0], [1 << 7, 0]])
    assert_array_equal(ones, stuck)
    stuck, ones = fm.masks("act")
    assert not stuck.any() and not ones.any()
    # forcing a pattern with the masks: (x & ~stuck) | ones
    x = np.int64(0x7FFF_FFFF)
    s, o = fm.masks("psum")
    assert (x & ~s[0, 0]) | o[0, 0] == 0xFFFF_FFFE


def test_check_fits():
    fm = FaultMap(16, 16).add(0, 0, "psum", 25, 1)
    fm.check_fits(16, 16, psum_bits=32)
    with pytest.raises(ValueError, match="16x16 array but the array is 32x32"):
        fm.check_fits(32, 32)
    with pytest.raises(ValueError, match="bit 25.*20-bit"):
        fm.check_fits(16, 16, psum_bits=20)


def test_register_helpers():
    assert as_register("psum") is Register.PSUM and as_register(Register.ACT) is Register.ACT
    assert [r.code for r in REGISTER_ORDER] == [0, 1, 2]
    assert Register.PSUM.max_width == 32 and Register.WEIGHT.max_width == 8
    with pytest.raises(ValueError, match="weight, act, psum"):
        as_register("bias")


def test_to_text_and_picture():
    fm = FaultMap(3, 12).add(0, 1, "weight", 7, 1).add(1, 10, "act", 0, 0).add(2, 11, "psum", 31, 1)
    fm = fm.add(2, 0, "psum", 1, 0).add(2, 0, "act", 1, 0)
    pic = fm.picture().splitlines()
    assert pic == ["  012345678901", "0 .w..........", "1 ..........a.", "2 *..........p"]
    text = fm.to_text()
    assert text.splitlines()[0] == fm.summary()
    assert "psum" in text and " 31 " in text and text.endswith(fm.picture())
    short = fm.to_text(max_faults=2)
    assert "... and 3 more" in short
    wide = FaultMap(2, 65).add(0, 64, "psum", 0, 1)
    assert "....." not in wide.to_text()  # no picture above 64 columns
    assert FaultMap(2, 64).to_text().endswith("." * 64)


def test_public_names():
    assert sa.FaultMap is FaultMap and sa.Register is Register


@settings(max_examples=200, deadline=None)
@given(records=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 4), st.integers(0, 2), st.integers(0, 7),
                                   st.integers(0, 1)), max_size=12))
def test_generated_records_make_the_same_map_as_from_records(records):
    """The generators' fast constructor sorts like the validated one; repeated sites (a value
    clash or a plain repeat) take the validated path."""
    rec = np.array(records, dtype=np.int64).reshape(-1, 5)
    try:
        want = FaultMap.from_records(4, 5, rec)
    except ValueError as e:
        with pytest.raises(ValueError, match=str(e).split("(")[0]):
            FaultMap._from_generated(4, 5, rec)
        return
    got = FaultMap._from_generated(4, 5, rec)
    assert got == want and got._faults.tobytes() == want._faults.tobytes()
