"""ISimDL's steps on the chip: each register's sensitivity mapped onto the PEs that hold or
produce its values (against loops written from docs/design.md §2.3-2.6), the bit prior as a
separable factor, importance-guided FAT's choice of faults, and the estimator over repeated seeded
runs on a small exhaustive space."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import sysarray as sa
from mitigation.importance import (FaultSpace, compare_samplers, importance_distribution, sensitivity_by_site,
                                   sensitivity_distribution, site_weights)
from mitigation.importance_fat import found_critical, one_fault_maps, uniform_faults
from mitigation.sensitivity import gemm_register_scores, register_sensitivity


def _operands(M=5, K=7, N=6, seed=0):
    rng = np.random.default_rng(seed)
    A = torch.tensor(rng.integers(0, 5, (M, K)), dtype=torch.float64)
    W = torch.tensor(rng.integers(-3, 4, (K, N)), dtype=torch.float64)
    G = torch.tensor(rng.normal(size=(M, N)))
    return A, W, G


def _ws_loops(A, W, G, R, C, mode):
    """Each register's values at each PE, one by one (docs/design.md §2.4)."""
    A, W, G = A.numpy(), W.numpy(), G.numpy()
    M, K = A.shape
    N = W.shape[1]
    out = {k: np.zeros((R, C)) for k in ("weight", "act", "psum")}
    for k in range(K):
        for n in range(N):  # stationary W[k, n] at (k % R, n % C); gradient summed over images
            g = sum(A[m, k] * G[m, n] for m in range(M))
            out["weight"][k % R, n % C] += abs(g if mode == "grad" else W[k, n] * g)
    for m in range(M):
        for k in range(K):
            for fc in range(-(-N // C)):
                for c in range(C):  # A[m, k] at (k % R, c) reaches columns c.. of the fold
                    g = sum(G[m, n] * W[k, n] for n in range(fc * C + c, min(N, fc * C + C)))
                    out["act"][k % R, c] += abs(g if mode == "grad" else A[m, k] * g)
        for n in range(N):
            for fr in range(-(-K // R)):
                for r in range(R):  # the partial sum after row r of row fold fr, unused rows included
                    p = sum(A[m, k] * W[k, n] for k in range(fr * R, min(K, fr * R + r + 1)))
                    out["psum"][r, n % C] += abs(G[m, n] if mode == "grad" else p * G[m, n])
    return out


def _os_loops(A, W, G, R, C, mode):
    """docs/design.md §2.5: PE (r, c) owns Y[m, n], m % R == r, n % C == c."""
    A, W, G = A.numpy(), W.numpy(), G.numpy()
    M, K = A.shape
    N = W.shape[1]
    Y = A @ W
    out = {k: np.zeros((R, C)) for k in ("weight", "act", "psum")}
    for m in range(M):
        for k in range(K):
            for fn in range(-(-N // C)):
                for c in range(C):  # A[m, k] east along row m % R
                    g = sum(G[m, n] * W[k, n] for n in range(fn * C + c, min(N, fn * C + C)))
                    out["act"][m % R, c] += abs(g if mode == "grad" else A[m, k] * g)
    for k in range(K):
        for n in range(N):
            for fm in range(-(-M // R)):
                for r in range(R):  # W[k, n] south down column n % C, reaching rows r..
                    g = sum(A[mm, k] * G[mm, n] for mm in range(fm * R + r, min(M, fm * R + R)))
                    out["weight"][r, n % C] += abs(g if mode == "grad" else W[k, n] * g)
    for m in range(M):
        for n in range(N):
            out["psum"][m % R, n % C] += abs(G[m, n] if mode == "grad" else Y[m, n] * G[m, n])
    return out


@pytest.mark.parametrize("mode", ["grad", "wgrad"])
@pytest.mark.parametrize("R, C", [(3, 4), (2, 2), (8, 8)])
def test_ws_and_os_register_scores_match_the_dataflow_loops(mode, R, C):
    A, W, G = _operands()
    for flow, loops in (("ws", _ws_loops), ("os", _os_loops)):
        got = gemm_register_scores(A, W, G, sa.ArrayConfig(R, C, flow), mode)
        want = loops(A, W, G, R, C, mode)
        for reg in ("weight", "act", "psum"):
            np.testing.assert_allclose(got[reg], want[reg], rtol=1e-10, atol=1e-12, err_msg=f"{flow} {reg}")


def test_is_is_ws_on_the_transposed_gemm():
    A, W, G = _operands()
    got = gemm_register_scores(A, W, G, sa.ArrayConfig(3, 4, "is"), "wgrad")
    ws = _ws_loops(W.t(), A.t(), G.t(), 3, 4, "wgrad")
    np.testing.assert_allclose(got["act"], ws["weight"], rtol=1e-10)  # stationary input in the act register
    np.testing.assert_allclose(got["weight"], ws["act"], rtol=1e-10)  # weights stream east
    np.testing.assert_allclose(got["psum"], ws["psum"], rtol=1e-10)


def test_one_neurons_gradient_lands_on_the_pes_that_produce_it():
    """WS, 4x4: only output neuron Y[0, 6] has a gradient; K = 3 so row fold 0 uses rows 0..2."""
    A = torch.ones(2, 3, dtype=torch.float64)
    W = torch.zeros(3, 8, dtype=torch.float64)
    W[1, 6] = 2.0  # the one weight feeding it from k = 1
    G = torch.zeros(2, 8, dtype=torch.float64)
    G[0, 6] = 1.0
    s = gemm_register_scores(A, W, G, sa.ArrayConfig(4, 4, "ws"), "grad")
    psum = np.zeros((4, 4))
    psum[:, 2] = 1.0  # its partial sum passes down column 6 % 4 = 2, every row (row 3 is unused but passes it)
    np.testing.assert_array_equal(s["psum"], psum)
    act = np.zeros((4, 4))
    act[1, :3] = 2.0  # A[0, 1] enters row 1 and reaches column 2 from columns 0, 1 and 2, not from 3
    np.testing.assert_array_equal(s["act"], act)
    weight = np.zeros((4, 4))
    weight[:3, 2] = 1.0  # dL/dW[k, 6] = A[0, k] G[0, 6] = 1 for k = 0..2, held at (k, 2)
    np.testing.assert_array_equal(s["weight"], weight)


def test_bit_prior_is_a_separable_factor():
    cfg = sa.ArrayConfig(2, 3)
    space = FaultSpace.build(cfg, ["weight", "psum"], None, (0, 1))
    sens = {"weight": np.arange(6.0).reshape(2, 3), "psum": np.array([[5.0, 0, 0], [0, 0, 1.0]]),
            "act": np.ones((2, 3))}
    per_site = sensitivity_by_site(sens, space)
    weight_cols = space.sites[:, 0] == 0
    np.testing.assert_array_equal(per_site[:, weight_cols], np.repeat(np.arange(6.0)[:, None], weight_cols.sum(), 1))
    for bw in ("uniform", "linear", "exponential"):
        p = sensitivity_distribution(sens, space, bw).reshape(6, -1)
        b = site_weights(space, bw)
        for g, name in ((0, "weight"), (2, "psum")):
            cols = space.sites[:, 0] == g
            s = sens[name].ravel() / sens[name].sum()
            np.testing.assert_allclose(p[:, cols], np.outer(s, b[cols]), rtol=1e-12)  # p = s(pe) * b(site)
    # bit prior off: within a register every site of a PE is equally likely, PEs by pure sensitivity
    p = sensitivity_distribution(sens, space, "uniform").reshape(6, -1)
    cols = space.sites[:, 0] == 2
    np.testing.assert_allclose(p[:, cols].sum(1) / p[:, cols].sum(), [5 / 6, 0, 0, 0, 0, 1 / 6])
    assert np.ptp(p[0, cols]) == 0
    q = importance_distribution(sens, space, "uniform", 0.2)
    np.testing.assert_allclose(q, 0.8 * p.ravel() + 0.2 / space.size)
    with pytest.raises(ValueError, match="no map for the register"):
        sensitivity_by_site({"weight": np.ones((2, 3))}, space)
    with pytest.raises(ValueError, match=r"\(2, 3\) array per register"):
        sensitivity_by_site({"weight": np.ones((3, 3)), "psum": np.ones((2, 3))}, space)
    with pytest.raises(ValueError, match="uniform mix"):
        importance_distribution(sens, space, "uniform", 0.0)


def test_guided_fat_trains_on_the_distinct_critical_draws():
    space = FaultSpace.build(sa.ArrayConfig(2, 2), ["act"], [7], (1,))
    got = found_critical(np.array([3, 1, 3, 2, 0, 2]), np.array([1, 0, 1, 1, 0, 1], bool), 5)
    assert got.tolist() == [3, 2]  # first-draw order, each once, non-critical dropped
    assert found_critical(np.array([3, 2, 1]), np.array([1, 1, 1], bool), 2).tolist() == [3, 2]
    maps = one_fault_maps(space, got)
    assert [len(m) for m in maps] == [1, 1] and maps[0] == sa.FaultMap(2, 2).add(row=1, col=1, register="act", bit=7,
                                                                                   value=1)
    u = uniform_faults(space, 3, seed=0)
    assert len(set(u.tolist())) == 3 and np.array_equal(u, uniform_faults(space, 3, seed=0))
    with pytest.raises(ValueError, match="one critical flag per draw"):
        found_critical(np.array([1, 2]), np.array([True]), 1)


@pytest.fixture(scope="module")
def small_exhaustive(lenet_ckpt):
    """Every psum fault of bits 10-15 on a 4x4 WS chip (192 faults, 48 images)."""
    from mitigation.campaign import CheckpointTask, Evaluator
    from mitigation.importance_fat import fault_map_of

    cfg = sa.ArrayConfig(4, 4, "ws")
    task = CheckpointTask(lenet_ckpt, limit=48)
    program, images, labels = task.load()
    ev = Evaluator.build(program, images, labels, cfg)
    space = FaultSpace.build(cfg, ["psum"], list(range(10, 16)), (0, 1))
    critical = np.array([ev.outcome(fault_map_of(space, space.records(np.array([f]))))["critical"]
                         for f in range(space.size)], dtype=bool)
    x, y = task.calibration(128)
    return cfg, space, critical, register_sensitivity(program, x, y, cfg, "grad")


def test_estimator_mean_over_seeded_runs_is_the_exhaustive_fraction(small_exhaustive):
    cfg, space, critical, sens = small_exhaustive
    truth = critical.mean()
    assert 0.1 < truth < 0.9
    q = importance_distribution(sens, space, "exponential", 0.1)
    est, half, covered = [], [], 0
    for seed in range(200):
        r = compare_samplers(q, lambda i: critical[i], 60, seed)["importance"]
        est.append(r["estimate"])
        half.append((r["estimate_hi"] - r["estimate_lo"]) / 2)
        covered += r["estimate_lo"] <= truth <= r["estimate_hi"]
    assert abs(np.mean(est) - truth) < 0.25 * np.mean(half)  # unbiased to well within one interval
    assert covered / 200 > 0.85  # 175 of these 200 seeds: below the nominal 95% (docs/importance.md)
