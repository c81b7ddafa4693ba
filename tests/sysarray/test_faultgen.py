"""Seeded fault-map generators: reproducibility, counts, distributions, choices, validation."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sysarray as sa
from sysarray import faultgen
from sysarray.faults import REGISTER_ORDER, FaultMap

CODES = {r.value: r.code for r in REGISTER_ORDER}
FAST = settings(max_examples=40, deadline=None)


def _mean_nn_distance(mask: np.ndarray) -> float:
    """Mean Euclidean distance from each True cell of ``mask`` to its nearest other True cell."""
    pts = np.argwhere(mask).astype(float)
    d = np.sqrt(((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    return float(d.min(axis=1).mean())


# --------------------------------------------------------------------------- reproducibility
@pytest.mark.parametrize(
    "make",
    [
        lambda s: FaultMap.random((16, 16), 0.1, seed=s),
        lambda s: FaultMap.random((16, 16), 0.1, seed=s, exact=False, faults_per_pe=2),
        lambda s: FaultMap.random_ber((16, 16), 0.002, seed=s),
        lambda s: FaultMap.random_ber((16, 16), 0.002, seed=s, exact=False),
        lambda s: FaultMap.clustered((16, 16), 0.1, seed=s),
        lambda s: FaultMap.clustered((16, 16), 0.1, seed=s, exact=False),
    ],
)
def test_same_seed_same_map_different_seeds_differ(make):
    a, b, c = make(7), make(7), make(8)
    assert a == b and len(a) > 0
    assert a != c
    assert make(np.random.default_rng(3)) == make(np.random.default_rng(3))
    assert make(np.random.SeedSequence(3)) == make(3)


def test_seed_is_required_and_validated():
    with pytest.raises(TypeError):
        FaultMap.random((4, 4), 0.1)  # no seed
    for bad in (None, 1.5, True, "0"):
        with pytest.raises(TypeError, match="'seed'"):
            FaultMap.random((4, 4), 0.1, seed=bad)
    with pytest.raises(ValueError, match="'seed' argument of FaultMap.random must be a non-negative integer"):
        FaultMap.random((4, 4), 0.1, seed=-1)


def test_geometry_forms_agree():
    cfg = sa.ArrayConfig(12, 10)
    a = FaultMap.random(cfg, 0.2, seed=1)
    assert a == FaultMap.random((12, 10), 0.2, seed=1) == FaultMap.random("12x10", 0.2, seed=1)
    assert a.shape == (12, 10)
    with pytest.raises(TypeError, match="geometry"):
        FaultMap.random(12, 0.2, seed=1)
    with pytest.raises(ValueError, match="'psum_bits'.*match"):
        FaultMap.random(sa.ArrayConfig(4, 4, psum_bits=20), 0.2, seed=1, psum_bits=32)


# --------------------------------------------------------------------------- PE rate
@pytest.mark.parametrize("rows, cols, rate", [(16, 16, 0.01), (16, 16, 0.5), (7, 9, 0.37), (32, 32, 1.0), (5, 5, 0.0), (3, 3, 0.5)])
def test_exact_pe_count(rows, cols, rate):
    fm = FaultMap.random((rows, cols), rate, seed=0)
    assert fm.n_faulty_pes == round(rate * (rows * cols))
    assert len(fm) == fm.n_faulty_pes  # one stuck bit per faulty PE by default


def test_exact_count_uses_python_round():
    assert FaultMap.random((3, 3), 0.5, seed=0).n_faulty_pes == 4  # round(4.5) == 4
    assert FaultMap.random((5, 3), 0.1, seed=0).n_faulty_pes == 2  # round(1.5) == 2


def test_bernoulli_pe_rate_mean_within_binomial_bound():
    rate, n_pe, draws = 0.1, 32 * 32, 100
    total = sum(FaultMap.random((32, 32), rate, seed=s, exact=False).n_faulty_pes for s in range(draws))
    n = n_pe * draws
    assert abs(total - rate * n) < 4 * math.sqrt(n * rate * (1 - rate))


def test_pe_positions_are_uniform():
    counts = sum(FaultMap.random((4, 4), 0.25, seed=s).faulty_pes().astype(int) for s in range(400))
    # each PE is faulty with probability 1/4 per map: 400 maps give Binomial(400, 1/4)
    assert np.all(np.abs(counts - 100) < 4 * math.sqrt(400 * 0.25 * 0.75))


@pytest.mark.parametrize("k", [1, 2, 5, 8])
def test_faults_per_pe_distinct_bits(k):
    fm = FaultMap.random((10, 10), 0.3, seed=k, faults_per_pe=k, registers=("act",))
    assert fm.n_faulty_pes == 30 and len(fm) == 30 * k
    recs = fm.records
    per_pe = np.unique(recs[:, 0] * 10 + recs[:, 1], return_counts=True)[1]
    assert np.all(per_pe == k)
    sites = {tuple(r[:4]) for r in recs}
    assert len(sites) == len(recs)


def test_faults_per_pe_too_many():
    with pytest.raises(ValueError, match=r"'faults_per_pe'.*1\.\.3"):
        FaultMap.random((4, 4), 0.5, seed=0, registers="weight", bits=[0, 1, 2], faults_per_pe=4)


def test_register_weights_and_uniform_registers():
    fm = FaultMap.random((64, 64), 1.0, seed=0)
    share = np.bincount(fm.records[:, 2], minlength=3) / len(fm)
    assert np.all(np.abs(share - 1 / 3) < 0.03)  # uniform over registers, not over bits
    fm = FaultMap.random((64, 64), 1.0, seed=0, registers={"weight": 0.8, "psum": 0.2, "act": 0.0})
    share = np.bincount(fm.records[:, 2], minlength=3) / len(fm)
    assert share[1] == 0 and abs(share[0] - 0.8) < 0.03 and abs(share[2] - 0.2) < 0.03


def test_values_choices():
    ones = FaultMap.random((16, 16), 1.0, seed=0, values=(1,)).records[:, 4]
    zeros = FaultMap.random((16, 16), 1.0, seed=0, values=0).records[:, 4]
    both = FaultMap.random((64, 64), 1.0, seed=0, values=(0, 1)).records[:, 4]
    weighted = FaultMap.random((64, 64), 1.0, seed=0, values={0: 1, 1: 3}).records[:, 4]
    assert ones.min() == 1 and zeros.max() == 0
    assert abs(both.mean() - 0.5) < 0.03 and abs(weighted.mean() - 0.75) < 0.03


def test_default_bits_cover_the_register_width():
    fm = FaultMap.random((64, 64), 1.0, seed=0, registers="psum")
    assert set(fm.records[:, 3]) == set(range(32))
    fm = FaultMap.random(sa.ArrayConfig(64, 64, psum_bits=20), 1.0, seed=0, registers=("psum", "act"))
    recs = fm.records
    assert set(recs[recs[:, 2] == 2, 3]) == set(range(20))
    assert set(recs[recs[:, 2] == 1, 3]) == set(range(8))
    fm = FaultMap.random((64, 64), 1.0, seed=0, registers="psum", psum_bits=17)
    assert fm.max_bit("psum") == 16


def test_bits_dict_per_register():
    fm = FaultMap.random((32, 32), 1.0, seed=0, bits={"psum": range(24, 32), "weight": [7]})
    recs = fm.records
    assert set(recs[:, 2]) == {0, 2}  # registers default to the dict's keys
    assert set(recs[recs[:, 2] == 2, 3]) <= set(range(24, 32))
    assert set(recs[recs[:, 2] == 0, 3]) == {7}
    fm = FaultMap.random((32, 32), 1.0, seed=0, registers=("act", "psum"), bits={"psum": [31]})
    recs = fm.records
    assert set(recs[recs[:, 2] == 1, 3]) == set(range(8)) and set(recs[recs[:, 2] == 2, 3]) == {31}


@FAST
@given(
    rows=st.integers(1, 12),
    cols=st.integers(1, 12),
    rate=st.floats(0, 1),
    regs=st.lists(st.sampled_from(["weight", "act", "psum"]), min_size=1, max_size=3, unique=True),
    bits=st.lists(st.integers(0, 7), min_size=1, max_size=8, unique=True),
    values=st.sampled_from([(0,), (1,), (0, 1)]),
    exact=st.booleans(),
    k=st.integers(1, 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_pe_rate_property(rows, cols, rate, regs, bits, values, exact, k, seed):
    k = min(k, len(regs) * len(bits))
    fm = FaultMap.random((rows, cols), rate, seed=seed, registers=regs, bits=bits, values=values, exact=exact, faults_per_pe=k)
    recs = fm.records
    assert fm.shape == (rows, cols)
    if exact:
        assert fm.n_faulty_pes == round(rate * (rows * cols))
    assert len(fm) == fm.n_faulty_pes * k
    assert set(recs[:, 2]) <= {CODES[r] for r in regs}
    assert set(recs[:, 3]) <= set(bits)
    assert set(recs[:, 4]) <= set(values)
    assert fm == FaultMap.random((rows, cols), rate, seed=seed, registers=regs, bits=bits, values=values, exact=exact, faults_per_pe=k)


# --------------------------------------------------------------------------- bit error rate
@pytest.mark.parametrize("psum_bits", [32, 20])
def test_ber_exact_count_convention(psum_bits):
    cfg = sa.ArrayConfig(16, 16, psum_bits=psum_bits)
    total_bits = 16 * 16 * (16 + psum_bits)
    for ber in (0.0, 1e-3, 0.01, 0.25):
        fm = FaultMap.random_ber(cfg, ber, seed=1)
        assert len(fm) == round(ber * total_bits)
        assert fm.bit_error_rate(psum_bits) == pytest.approx(round(ber * total_bits) / total_bits)
    full = FaultMap.random_ber(cfg, 1.0, seed=0)
    assert len(full) == total_bits  # every bit of every register stuck


def test_ber_default_is_uniform_over_bits():
    fm = FaultMap.random_ber((32, 32), 0.2, seed=0)
    share = np.bincount(fm.records[:, 2], minlength=3) / len(fm)
    assert np.all(np.abs(share - np.array([8, 8, 32]) / 48) < 0.02)


def test_ber_register_weights():
    fm = FaultMap.random_ber((32, 32), 0.05, seed=0, registers={"weight": 1, "psum": 1})
    share = np.bincount(fm.records[:, 2], minlength=3) / len(fm)
    assert share[1] == 0 and abs(share[0] - 0.5) < 0.04


def test_ber_bernoulli_mean_within_binomial_bound():
    ber, draws, bits_per_map = 0.01, 50, 16 * 16 * 48
    total = sum(len(FaultMap.random_ber((16, 16), ber, seed=s, exact=False)) for s in range(draws))
    n = bits_per_map * draws
    assert abs(total - ber * n) < 4 * math.sqrt(n * ber * (1 - ber))
    # restricted to psum: each psum bit stuck with probability ber * 48 / 32, same expected count
    total = sum(len(FaultMap.random_ber((16, 16), ber, seed=s, exact=False, registers="psum")) for s in range(draws))
    p = ber * 48 / 32
    assert abs(total - ber * n) < 4 * math.sqrt(n * 32 / 48 * p * (1 - p))


def test_ber_too_high_for_choices():
    with pytest.raises(ValueError, match="'ber'.*hold only"):
        FaultMap.random_ber((4, 4), 0.5, seed=0, registers="weight")
    with pytest.raises(ValueError, match="'ber'.*too high"):
        FaultMap.random_ber((4, 4), 0.5, seed=0, registers="weight", exact=False)


@FAST
@given(
    rows=st.integers(1, 8),
    cols=st.integers(1, 8),
    ber=st.floats(0, 0.3),
    regs=st.lists(st.sampled_from(["weight", "act", "psum"]), min_size=1, max_size=3, unique=True),
    values=st.sampled_from([(0,), (1,), (0, 1)]),
    seed=st.integers(0, 2**32 - 1),
)
def test_ber_property(rows, cols, ber, regs, values, seed):
    bits = {"weight": range(2, 6), "act": [0, 7], "psum": range(20, 32)}
    bits = {r: bits[r] for r in regs}
    allowed = sum(len(b) for b in bits.values()) * rows * cols
    want = round(ber * rows * cols * 48)
    if want > allowed:
        with pytest.raises(ValueError):
            FaultMap.random_ber((rows, cols), ber, seed=seed, bits=bits, values=values)
        return
    fm = FaultMap.random_ber((rows, cols), ber, seed=seed, bits=bits, values=values)
    assert len(fm) == want
    for r, c, g, b, v in fm.records:
        name = REGISTER_ORDER[g].value
        assert name in regs and b in bits[name] and v in values


# --------------------------------------------------------------------------- clustered
def test_clustered_exact_count_and_concentration():
    ratios = []
    for s in range(10):
        cl = FaultMap.clustered((32, 32), 0.05, seed=s, n_clusters=2)
        un = FaultMap.random((32, 32), 0.05, seed=s)
        assert cl.n_faulty_pes == un.n_faulty_pes == round(0.05 * 1024)
        ratios.append(_mean_nn_distance(cl.faulty_pes()) / _mean_nn_distance(un.faulty_pes()))
    assert max(ratios) < 0.8 and np.mean(ratios) < 0.6


def test_clustered_single_tight_cluster_is_a_blob():
    fm = FaultMap.clustered((64, 64), 9 / 4096, seed=3, n_clusters=1, radius=0.5)
    pts = np.argwhere(fm.faulty_pes())
    assert len(pts) == 9
    assert np.ptp(pts[:, 0]) <= 4 and np.ptp(pts[:, 1]) <= 4


def test_clustered_bernoulli_rate_on_average():
    rate, draws, n = 0.08, 60, 24 * 24
    total = sum(FaultMap.clustered((24, 24), rate, seed=s, exact=False).n_faulty_pes for s in range(draws))
    # a sum of independent Bernoullis with mean rate: variance at most n * draws * rate
    assert abs(total - rate * n * draws) < 4 * math.sqrt(n * draws * rate)


@pytest.mark.parametrize("rate", [0.0, 1e-4, 0.03, 0.5, 0.999, 1.0])
def test_cluster_probabilities_mean_is_the_rate(rate):
    centres = np.array([[1.0, 2.0], [30.0, 5.5]])
    log_w = faultgen.cluster_log_weights(32, 32, centres, 1.5)
    p = faultgen.cluster_probabilities(log_w, rate)
    assert p.min() >= 0 and p.max() <= 1
    assert p.mean() == pytest.approx(rate, abs=1e-9)
    assert p.reshape(32, 32)[1, 2] == p.max()  # highest at a centre


def test_cluster_log_weights_no_underflow():
    log_w = faultgen.cluster_log_weights(256, 256, np.array([[0.0, 0.0]]), 1.0)
    assert np.all(np.isfinite(log_w))
    assert log_w[0] == 0.0 and log_w[-1] == pytest.approx(-(255**2) / 1.0)


def test_clustered_full_and_empty():
    assert FaultMap.clustered((8, 8), 1.0, seed=0).n_faulty_pes == 64
    assert FaultMap.clustered((8, 8), 1.0, seed=0, exact=False).n_faulty_pes == 64
    assert FaultMap.clustered((8, 8), 0.0, seed=0, exact=False).is_empty
    assert FaultMap.clustered((1, 1), 1.0, seed=0).n_faulty_pes == 1


@FAST
@given(
    rows=st.integers(1, 16),
    cols=st.integers(1, 16),
    rate=st.floats(0, 1),
    n_clusters=st.integers(1, 4),
    radius=st.one_of(st.none(), st.floats(0.3, 5)),
    k=st.integers(1, 2),
    seed=st.integers(0, 2**32 - 1),
)
def test_clustered_property(rows, cols, rate, n_clusters, radius, k, seed):
    fm = FaultMap.clustered(
        (rows, cols), rate, seed=seed, n_clusters=n_clusters, radius=radius, registers="psum", bits=[30, 31], values=(1,), faults_per_pe=k
    )
    assert fm.n_faulty_pes == round(rate * (rows * cols)) and len(fm) == fm.n_faulty_pes * k
    recs = fm.records
    assert set(recs[:, 2]) <= {2} and set(recs[:, 3]) <= {30, 31} and set(recs[:, 4]) <= {1}


# --------------------------------------------------------------------------- populations
def test_population_reproducible_and_spawned():
    cfg = sa.ArrayConfig(8, 8)
    pop = faultgen.population(5, cfg, seed=11, pe_rate=0.1, registers=("psum",))
    assert len(pop) == 5 and all(fm.n_faulty_pes == 6 for fm in pop)
    assert pop == faultgen.population(5, cfg, seed=11, pe_rate=0.1, registers=("psum",))
    assert len(set(pop)) == 5  # chips differ
    assert pop[:3] == faultgen.population(3, cfg, seed=11, pe_rate=0.1, registers=("psum",))
    children = np.random.SeedSequence(11).spawn(5)
    for i, fm in enumerate(pop):
        assert fm == FaultMap.random(cfg, 0.1, seed=children[i], registers=("psum",))
        assert fm == FaultMap.random(cfg, 0.1, seed=faultgen.chip_rng(11, i), registers=("psum",))
    assert faultgen.population(0, cfg, seed=1, pe_rate=0.1) == []


def test_population_methods_and_meta():
    ber = faultgen.population(3, (8, 8), seed=0, method="ber", ber=0.01)
    assert all(len(fm) == round(0.01 * 64 * 48) for fm in ber)
    cl = faultgen.population(2, (8, 8), seed=0, method="clustered", pe_rate=0.2, n_clusters=1)
    assert all(fm.n_faulty_pes == round(0.2 * 64) for fm in cl)
    gens = faultgen.population(2, (8, 8), seed=np.random.default_rng(5), pe_rate=0.2)
    assert gens == faultgen.population(2, (8, 8), seed=np.random.default_rng(5), pe_rate=0.2)
    with pytest.raises(ValueError, match="'method'.*pe_rate, ber, clustered"):
        faultgen.population(2, (8, 8), seed=0, method="uniform", pe_rate=0.1)
    meta = faultgen.population_meta(2, sa.ArrayConfig(8, 8, psum_bits=20), seed=3, pe_rate=0.1, bits=range(16, 20))
    assert meta[1] == {
        "generator": "pe_rate", "seed": 3, "chip": 1, "n_chips": 2, "rows": 8, "cols": 8, "psum_bits": 20,
        "settings": {"pe_rate": 0.1, "bits": [16, 17, 18, 19]},
    }


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(pe_rate=1.5), ValueError,
         r"The 'pe_rate' argument of FaultMap.random must be a finite number within \[0, 1\]. Got 1.5 instead."),
        (dict(pe_rate=-0.1), ValueError, r"'pe_rate'.*\[0, 1\]"),
        (dict(pe_rate=float("nan")), ValueError, "'pe_rate'"),
        (dict(pe_rate="0.1"), TypeError, "'pe_rate'"),
        (dict(pe_rate=0.1, registers=("psum", "bias")), ValueError, "'registers'.*weight, act, psum.*'bias'"),
        (dict(pe_rate=0.1, registers=()), ValueError, "'registers'.*at least one"),
        (dict(pe_rate=0.1, registers={"psum": 0}), ValueError, "'registers'.*positive"),
        (dict(pe_rate=0.1, registers={"psum": -1}), ValueError, "'registers'.*non-negative"),
        (dict(pe_rate=0.1, registers="psum", bits=[40]),
         ValueError, r"The 'bits' argument of FaultMap.random must be within 0\.\.31 for register 'psum'. Got 40 instead."),
        (dict(pe_rate=0.1, registers="weight", bits=range(0, 9)), ValueError, r"0\.\.7 for register 'weight'. Got 8"),
        (dict(pe_rate=0.1, registers="psum", bits=[-1]), ValueError, "'bits'"),
        (dict(pe_rate=0.1, registers="psum", bits=[]), ValueError, "'bits'.*at least one bit"),
        (dict(pe_rate=0.1, registers="psum", bits=[1.0]), TypeError, "'bits'"),
        (dict(pe_rate=0.1, registers="psum", bits={"act": [0]}), ValueError, "'bits'.*'act'"),
        (dict(pe_rate=0.1, values=()), ValueError, "'values'.*at least one"),
        (dict(pe_rate=0.1, values=(2,)), ValueError, "'values'.*0 and/or 1"),
        (dict(pe_rate=0.1, values={0: 0, 1: 0}), ValueError, "'values'"),
        (dict(pe_rate=0.1, exact=1), TypeError, "'exact'"),
        (dict(pe_rate=0.1, faults_per_pe=0), ValueError, "'faults_per_pe'"),
    ],
)
def test_random_validation(kwargs, err, match):
    with pytest.raises(err, match=match):
        FaultMap.random((4, 4), seed=0, **kwargs)


def test_psum_bits_limits_bit_choices():
    with pytest.raises(ValueError, match=r"0\.\.19 for register 'psum'. Got 20 instead"):
        FaultMap.random(sa.ArrayConfig(4, 4, psum_bits=20), 0.1, seed=0, registers="psum", bits=range(32))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: FaultMap.random_ber((4, 4), 2.0, seed=0),
             r"The 'ber' argument of FaultMap.random_ber must be a finite number within \[0, 1\]"),
        (lambda: FaultMap.clustered((4, 4), 1.1, seed=0), "The 'pe_rate' argument of FaultMap.clustered"),
        (lambda: FaultMap.clustered((4, 4), 0.1, seed=0, radius=0), "'radius'"),
        (lambda: FaultMap.clustered((4, 4), 0.1, seed=0, n_clusters=0), "'n_clusters'"),
        (lambda: FaultMap.random_ber((4, 4), 0.1, seed=0, registers=["x"]), "'registers' argument of FaultMap.random_ber"),
    ],
)
def test_other_generators_validate(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_interface_md_call():
    cfg = sa.ArrayConfig(rows=16, cols=16, dataflow="ws", psum_bits=32, bypass=False)
    fm = sa.FaultMap.random(cfg, pe_rate=0.01, registers=("psum",), bits=range(0, 32), values=(0, 1), seed=0)
    assert fm.n_faulty_pes == round(0.01 * 256) and fm.registers() == (sa.Register.PSUM,)
    fm.check_fits(16, 16, psum_bits=32)


def test_cached_sites_keep_their_checks():
    """make_sites keeps the sites of plain choices for the next call; a choice that only equals a
    cached one (True == 1, 3.0 == 3) is still checked and refused, and kept sites are read-only."""
    import pytest

    from sysarray.faultgen import make_sites

    sites = make_sites(("psum",), (1, 2), (0, 1), 32)
    assert make_sites(("psum",), (1, 2), (0, 1), 32) is sites
    assert not sites.weight.flags.writeable
    with pytest.raises(TypeError):
        make_sites(("psum",), (True, 2), (0, 1), 32)
    with pytest.raises(TypeError):
        make_sites(("psum",), (1.0, 2), (0, 1), 32)
    with pytest.raises(ValueError):
        make_sites(("psum",), (1, 2), (0, True), 32)
    fresh = make_sites(["psum"], [1, 2], [0, 1], 32)  # lists: built anew, the same sites
    assert fresh is not sites and (fresh.bit == sites.bit).all() and (fresh.weight == sites.weight).all()
