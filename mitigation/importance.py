"""Importance sampling of critical PE faults (docs/design.md §6.2, docs/importance.md; ISimDL adapted to PEs).

ISimDL (Sensitivity-based Importance Sampling for DL fault injection) samples faults in
proportion to a gradient sensitivity, mixed with uniform sampling so every fault keeps a
non-zero probability, and counts how many sampled faults are critical. On the chip a fault is
``(PE row, PE column, register, bit, value)``:

- PE sensitivity, per register (:func:`mitigation.sensitivity.register_sensitivity`, the default
  ``sensitivity_target="register"``): one backward pass of the fake-quant twin over a calibration
  batch; each register of a PE is scored by ``|v * dL/dv|`` (``"wgrad"``) or ``|dL/dv|``
  (``"grad"``) summed over the values ``v`` it holds or passes on: weights for the weight register,
  activations for the act register (their gradient from the GEMM outputs they reach), partial sums
  for the psum register (the gradient of the output they end in); docs/importance.md.
- PE sensitivity from the weights alone (:func:`pe_sensitivity`, ``sensitivity_target="weights"``):
  the sum over the weights mapped to the PE, across layers, of ``|w * dL/dw|`` or ``|dL/dw|``, the
  same map for every register. WS maps GEMM weight ``W[k, n]`` to PE ``(k mod R, n mod C)``. IS
  streams ``W[k, n]`` along row ``k mod R`` and OS down column ``n mod C``: there the row (column)
  total is spread evenly over the row (column).
- Importance distribution (:func:`importance_distribution`): ``p_imp(pe, site) = s_g(pe) / sum(s_g)
  * b(site)``, ``s_g`` the sensitivity of the site's register ``g``, with the separable bit prior
  ``b`` uniform (off), linear (``bit + 1``) or exponential (``2^bit``), normalised within each
  register, every register getting the same share and both stuck values half of a bit's weight;
  ``q = (1 - mix) p_imp + mix / |F|`` (default ``mix = 0.1``).
  The mix must be in ``(0, 1]``: every fault then has ``q >= mix / |F| > 0``, which the estimator's
  weights ``p_u / q`` need (a fault with ``q = 0`` could never be drawn, so its criticality would
  be missing from every estimate).
- Estimation (:func:`estimate_fraction`): draws are i.i.d. from ``q``, with importance weights
  ``w_i = p_u / q(f_i)`` (``p_u = 1 / |F|``). The critical fraction ``|critical| / |F|`` is
  estimated by the self-normalised estimator ``p = sum(w_i c_i) / sum(w_i)`` (Owen, *Monte Carlo
  theory, methods and examples*, 2013, §9.2), a weighted average of 0/1 outcomes and so always in
  [0, 1]. The plain importance mean ``mean(w_i c_i)`` is unbiased but unbounded: with weights up to
  ``1 / mix`` (10 at the default mix) a few critical draws of low-``q`` faults push it above 1.
  The self-normalised estimator's bias is O(1/n) and it is consistent. Its interval is the Wilson
  score interval at the effective sample size ``n_e = min(p (1 - p) / v, sum(w)^2 / sum(w^2))``:
  ``v = sum(w_i^2 (c_i - p)^2) / sum(w_i)^2`` is the delta-method variance (Owen eq. 9.9) and the
  second term Kish's effective sample size. The delta-method variance alone is estimated from the
  same few draws and comes out too small when the rare heavy-weight draws are missing (about 79%
  coverage at a nominal 95% for 40 draws of a psum-like space); the Kish bound keeps the interval
  from claiming more draws than the weights' spread allows (92-97% there), and it is the only term
  when every draw agrees (``p`` is 0 or 1, ``v = 0``). The interval lies in [0, 1] and contains
  ``p``; for equal weights (a uniform sample) it is the Wilson interval of the plain fraction.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from sysarray import mapping
from mitigation.campaign import SingleFaults, run_campaign
from mitigation.campaign.stats import wilson_interval, wilson_score_interval
from sysarray.validation import check_int, check_seed

BIT_WEIGHTINGS = ("uniform", "linear", "exponential")
SENSITIVITY_MODES = ("wgrad", "grad")
SENSITIVITY_TARGETS = ("register", "weights")
DEFAULT_UNIFORM_MIX = 0.1
RESULT_FILE = "importance.json"


# ====================================================================== sensitivity
def fold_to_array(s_kn: np.ndarray, cfg: Any) -> np.ndarray:
    """(K, N) per-weight scores of one GEMM -> (R, C) per-PE sums for the dataflow of ``cfg``
    (:func:`sysarray.mapping.weight_pe_totals`)."""
    return mapping.weight_pe_totals(s_kn, cfg)


def pe_sensitivity(program: Any, images: Any, labels: Any, cfg: Any, mode: str = "wgrad",
                   batch_size: int = 256) -> np.ndarray:
    """(R, C) float64 sensitivity of every PE from one backward pass over ``images`` (N, C, H, W).

    The loss is the mean cross-entropy of the fake-quant twin (its forward equals the integer
    program's); see the module docstring for the mapping of weights to PEs.
    """
    import torch
    import torch.nn.functional as F

    from accel_models.fakequant import FakeQuantProgram

    if mode not in SENSITIVITY_MODES:
        raise ValueError(f"The sensitivity mode must be one of {', '.join(SENSITIVITY_MODES)}. Got {mode!r} instead.")
    twin = FakeQuantProgram(program)
    twin.zero_grad()
    n = len(labels)
    for i in range(0, n, batch_size):
        logits = twin(images[i:i + batch_size])
        loss = F.cross_entropy(logits.float(), labels[i:i + batch_size], reduction="sum") / n
        loss.backward()
    total = np.zeros((cfg.rows, cfg.cols))
    with torch.no_grad():
        for op in program.gemms:
            w = twin.weights[twin.key(op)]
            g = w.grad if w.grad is not None else torch.zeros_like(w)
            score = (w * g).abs() if mode == "wgrad" else g.abs()
            score = score.reshape(score.shape[0], -1).double().numpy()
            groups = op.groups if op.kind == "conv" else 1
            ng = score.shape[0] // groups
            for gi in range(groups):
                total += fold_to_array(score[gi * ng:(gi + 1) * ng].T, cfg)
    return total


# ====================================================================== the fault space
@dataclass(frozen=True)
class FaultSpace:
    """All single faults ``(row, col, register, bit, value)`` allowed: fault ``f = pe * S + s``
    with ``pe = row * cols + col`` and ``sites[s] = (register code, bit, value)``."""

    rows: int
    cols: int
    sites: np.ndarray  # (S, 3) int64

    @classmethod
    def build(cls, cfg: Any, registers: Sequence[str], bits: Sequence[int] | None, values: Sequence[int]) -> "FaultSpace":
        sites = SingleFaults._sites(registers, bits, values, cfg.psum_bits)
        return cls(cfg.rows, cfg.cols, np.array(sites, dtype=np.int64).reshape(-1, 3))

    @property
    def size(self) -> int:
        return self.rows * self.cols * len(self.sites)

    def records(self, index: np.ndarray) -> np.ndarray:
        """(n, 5) fault records of fault indices ``index`` (n,)."""
        index = np.asarray(index, dtype=np.int64)
        pe, s = np.divmod(index, len(self.sites))
        return np.column_stack([pe // self.cols, pe % self.cols, self.sites[s]]).astype(np.int64)

    def index_of(self, records: np.ndarray) -> np.ndarray:
        """Fault indices of (n, 5) records (each must be in the space)."""
        rec = np.asarray(records, dtype=np.int64).reshape(-1, 5)
        lookup = {tuple(x): i for i, x in enumerate(self.sites.tolist())}
        try:
            s = np.array([lookup[(g, b, v)] for g, b, v in rec[:, 2:].tolist()], dtype=np.int64)
        except KeyError as e:
            raise ValueError(f"The fault site {e.args[0]} (register code, bit, value) is not in the fault space.") from None
        return (rec[:, 0] * self.cols + rec[:, 1]) * len(self.sites) + s


def site_weights(space: FaultSpace, bit_weighting: str) -> np.ndarray:
    """(S,) probabilities of the sites under a bit weighting (see the module docstring)."""
    if bit_weighting not in BIT_WEIGHTINGS:
        raise ValueError(f"The bit weighting must be one of {', '.join(BIT_WEIGHTINGS)}. Got {bit_weighting!r} instead.")
    bits = space.sites[:, 1].astype(np.float64)
    raw = {"uniform": np.ones_like(bits), "linear": bits + 1.0, "exponential": np.exp2(bits)}[bit_weighting]
    out = np.zeros_like(raw)
    regs = np.unique(space.sites[:, 0])
    for g in regs:
        mask = space.sites[:, 0] == g
        out[mask] = raw[mask] / raw[mask].sum() / len(regs)
    return out / out.sum()


def check_uniform_mix(uniform_mix: Any) -> float:
    """``uniform_mix`` as a float after checking ``0 < uniform_mix <= 1``."""
    if isinstance(uniform_mix, bool) or not isinstance(uniform_mix, (int, float, np.integer, np.floating)) \
            or not 0 < uniform_mix <= 1:
        raise ValueError(f"The uniform mix must be within (0, 1] so that every fault can be drawn and the estimate "
                         f"stays consistent (0.1 keeps 10% uniform draws). Got {uniform_mix!r} instead.")
    return float(uniform_mix)


def sensitivity_by_site(sensitivity: Any, space: FaultSpace) -> np.ndarray:
    """(PEs, S) non-negative sensitivity of each PE for each site's register: ``sensitivity`` is
    one (R, C) array for every register or ``{register name: (R, C)}`` (each register its own)."""
    from sysarray.faults import REGISTER_ORDER, as_register

    shape = (space.rows, space.cols)
    codes = space.sites[:, 0]
    if isinstance(sensitivity, dict):
        names = {as_register(name, "the sensitivity").code: name for name in sensitivity}
        missing = sorted({int(g) for g in codes} - set(names))
        if missing:
            need = ", ".join(REGISTER_ORDER[g].value for g in missing)
            raise ValueError(f"The sensitivity has no map for the register(s) {need} of the fault space.")
        maps = {g: np.asarray(sensitivity[name], dtype=np.float64) for g, name in names.items()}
    else:
        maps = {int(g): np.asarray(sensitivity, dtype=np.float64) for g in np.unique(codes)}
    out = np.zeros((space.rows * space.cols, len(space.sites)))
    for g, m in maps.items():
        if m.shape != shape:
            raise ValueError(f"The sensitivity must be a ({space.rows}, {space.cols}) array per register. "
                             f"Got shape {m.shape} instead.")
        if not (codes == g).any():
            continue
        m = np.where(np.isfinite(m) & (m > 0), m, 0.0).ravel()
        out[:, codes == g] = m[:, None]
    return out


def importance_distribution(sensitivity: Any, space: FaultSpace, bit_weighting: str = "exponential",
                            uniform_mix: float = DEFAULT_UNIFORM_MIX) -> np.ndarray:
    """(|F|,) float64 sampling probabilities ``q`` over the fault space (sums to 1).

    ``p_imp(pe, site) = s_g(pe) / sum_pe s_g * b(site)`` with ``g`` the site's register, ``s_g``
    its PE sensitivity (:func:`sensitivity_by_site`; all zero: PEs equally likely) and ``b`` the
    bit prior (:func:`site_weights`); ``q = (1 - mix) p_imp + mix / |F|``. The two factors are
    separable: ``bit_weighting="uniform"`` gives the pure sensitivity.
    """
    uniform_mix = check_uniform_mix(uniform_mix)
    q = (1.0 - uniform_mix) * sensitivity_distribution(sensitivity, space, bit_weighting) + uniform_mix / space.size
    return q / q.sum()


def sensitivity_distribution(sensitivity: Any, space: FaultSpace, bit_weighting: str = "exponential") -> np.ndarray:
    """(|F|,) ``p_imp``: the importance distribution before the uniform mix (see
    :func:`importance_distribution`)."""
    s = sensitivity_by_site(sensitivity, space)
    totals = s.sum(axis=0)
    pe_p = np.where(totals > 0, s / np.where(totals > 0, totals, 1.0), 1.0 / s.shape[0])
    return (pe_p * site_weights(space, bit_weighting)[None, :]).ravel()


# ====================================================================== sampling and estimation
def draw(q: np.ndarray, budget: int, rng: np.random.Generator) -> np.ndarray:
    """``budget`` i.i.d. fault indices from ``q`` (with replacement: the estimator assumes i.i.d. draws)."""
    return rng.choice(len(q), size=int(budget), replace=True, p=q)


def estimate_fraction(critical: np.ndarray, weights: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """``(estimate, lo, hi)`` of the critical fraction from draws with importance weights ``p_u / q``.

    The self-normalised estimate ``sum(w c) / sum(w)`` with the Wilson interval at its effective
    sample size (see the module docstring); ``0 <= lo <= estimate <= hi <= 1``. All weights 1 (a
    uniform sample) give the plain fraction and its Wilson interval. No draws give NaNs.
    """
    c = np.asarray(critical)
    w = np.asarray(weights, dtype=np.float64)
    if c.ndim != 1 or w.shape != c.shape:
        raise ValueError(f"estimate_fraction needs 1-D critical flags and weights of the same length. "
                         f"Got shapes {c.shape} and {w.shape} instead.")
    if not np.isin(c, (0, 1)).all():
        raise ValueError("estimate_fraction needs critical flags that are 0/1 or booleans. Got other values instead.")
    if not (np.isfinite(w).all() and (w > 0).all()):
        raise ValueError("estimate_fraction needs finite, positive importance weights. Got a zero, negative or "
                         "non-finite weight instead.")
    n = len(c)
    if n == 0:
        return (math.nan, math.nan, math.nan)
    c = c.astype(np.float64)
    if np.all(w == 1.0):
        lo, hi = wilson_interval(int(c.sum()), n, confidence)
        return (float(c.mean()), lo, hi)
    w = w / w.max()  # the estimate and n_e do not depend on the weights' scale; this keeps w^2 finite
    total = float(w.sum())
    est = min(1.0, max(0.0, float((w * c).sum()) / total))
    var = float((w * w * (c - est) ** 2).sum()) / (total * total)
    n_eff = total * total / float((w * w).sum())
    if 0.0 < est < 1.0 and var > 0:
        n_eff = min(n_eff, est * (1.0 - est) / var)
    lo, hi = wilson_score_interval(est, n_eff, confidence)
    return (est, lo, hi)


def summarize_draws(name: str, index: np.ndarray, critical_of: Callable[[np.ndarray], np.ndarray], q: np.ndarray,
                    confidence: float = 0.95) -> dict:
    """Precision, distinct critical faults found and the critical-fraction estimate of one sampler's draws."""
    index = np.asarray(index, dtype=np.int64)
    crit = np.asarray(critical_of(index), dtype=bool)
    weights = np.full(len(index), 1.0) if name == "uniform" else (1.0 / len(q)) / q[index]
    est, lo, hi = estimate_fraction(crit, weights, confidence)
    return {"sampler": name, "draws": int(len(index)), "critical_draws": int(crit.sum()),
            "precision": float(crit.mean()) if len(crit) else math.nan,
            "distinct_faults": int(len(np.unique(index))), "distinct_critical": int(len(np.unique(index[crit]))),
            "estimate": est, "estimate_lo": lo, "estimate_hi": hi}


def compare_samplers(q: np.ndarray, critical_of: Callable[[np.ndarray], np.ndarray], budget: int, seed: int,
                     confidence: float = 0.95) -> dict:
    """Importance versus uniform sampling at the same ``budget`` (draws each).

    The two samplers use ``SeedSequence(seed).spawn(2)``; ``critical_of(indices) -> bool array``.
    Returns both summaries and ``precision_gain`` (importance precision / uniform precision).
    """
    imp_seq, uni_seq = np.random.SeedSequence(seed).spawn(2)
    imp = draw(q, budget, np.random.default_rng(imp_seq))
    uni = np.random.default_rng(uni_seq).integers(0, len(q), size=int(budget))
    a = summarize_draws("importance", imp, critical_of, q, confidence)
    b = summarize_draws("uniform", uni, critical_of, q, confidence)
    gain = a["precision"] / b["precision"] if b["precision"] > 0 else math.inf
    return {"importance": a, "uniform": b, "precision_gain": gain, "_draws": (imp, uni)}


# ====================================================================== the end-to-end run
def run_importance(task: Any, cfg: Any, out: str, registers: Sequence[str], bits: Sequence[int] | None = None,
                   values: Sequence[int] = (0, 1), budget: int = 100, uniform_mix: float = DEFAULT_UNIFORM_MIX,
                   bit_weighting: str = "exponential", sensitivity: str = "wgrad", calibration_images: int = 256,
                   seed: int = 0, confidence: float = 0.95, sensitivity_target: str = "register",
                   **campaign_options: Any) -> dict:
    """Draw ``budget`` faults by importance and ``budget`` uniformly, inject the distinct ones (a
    resumable single-fault campaign in ``out``), and write ``out/importance.json``.

    ``sensitivity_target``: ``"register"`` scores each register by the values it holds
    (:func:`mitigation.sensitivity.register_sensitivity`), ``"weights"`` scores every register by
    the weights mapped to the PE (:func:`pe_sensitivity`).

    Returns the JSON-ready result: both samplers' precision and estimates, the precision gain, the
    settings, each register's (R, C) sensitivity and, as ``sensitivity``, the (R, C) PE marginal of
    the importance distribution before the uniform mix.
    """
    budget = check_int(budget, "budget", "run_importance", lo=2)
    seed = check_seed(seed, "run_importance")
    uniform_mix = check_uniform_mix(uniform_mix)  # before the sensitivity pass, not after it
    if bit_weighting not in BIT_WEIGHTINGS:
        raise ValueError(f"The bit weighting must be one of {', '.join(BIT_WEIGHTINGS)}. "
                         f"Got {bit_weighting!r} instead.")
    if sensitivity not in SENSITIVITY_MODES:
        raise ValueError(f"The sensitivity mode must be one of {', '.join(SENSITIVITY_MODES)}. "
                         f"Got {sensitivity!r} instead.")
    if sensitivity_target not in SENSITIVITY_TARGETS:
        raise ValueError(f"The sensitivity target must be one of {', '.join(SENSITIVITY_TARGETS)}. "
                         f"Got {sensitivity_target!r} instead.")
    space = FaultSpace.build(cfg, registers, bits, values)
    program, _, _ = task.load()
    cal_x, cal_y = task.calibration(calibration_images)
    if sensitivity_target == "register":
        from mitigation.sensitivity import register_sensitivity

        sens = register_sensitivity(program, cal_x, cal_y, cfg, sensitivity)
    else:
        sens = pe_sensitivity(program, cal_x, cal_y, cfg, sensitivity)
    q = importance_distribution(sens, space, bit_weighting, uniform_mix)
    pe_marginal = sensitivity_distribution(sens, space, bit_weighting).reshape(cfg.rows * cfg.cols, -1).sum(1)
    imp_seq, uni_seq = np.random.SeedSequence(seed).spawn(2)
    imp = draw(q, budget, np.random.default_rng(imp_seq))
    uni = np.random.default_rng(uni_seq).integers(0, len(q), size=budget)
    distinct = np.unique(np.concatenate([imp, uni]))
    settings = {"registers": list(registers), "bits": None if bits is None else [int(b) for b in bits],
                "values": [int(v) for v in values], "budget": budget, "uniform_mix": float(uniform_mix),
                "bit_weighting": bit_weighting, "sensitivity": sensitivity, "sensitivity_target": sensitivity_target,
                "calibration_images": calibration_images, "seed": seed}
    population = SingleFaults(cfg.rows, cfg.cols, space.records(distinct), {"importance": settings})
    options = {"confidence": confidence, **campaign_options}
    run_campaign(task, population, out, cfg, **options)
    from mitigation.campaign.store import read_results

    _, rows = read_results(out)
    crit_by_fault = dict(zip(distinct.tolist(), (int(r["critical"]) for r in rows)))

    def critical_of(index: np.ndarray) -> np.ndarray:
        return np.array([crit_by_fault[int(i)] for i in index], dtype=bool)

    a = summarize_draws("importance", imp, critical_of, q, confidence)
    b = summarize_draws("uniform", uni, critical_of, q, confidence)
    result = {"settings": settings, "fault_space": space.size, "confidence": confidence, "importance": a, "uniform": b,
              "precision_gain": a["precision"] / b["precision"] if b["precision"] > 0 else None,
              "injected": int(len(distinct)), "sensitivity": pe_marginal.reshape(cfg.rows, cfg.cols).tolist(),
              "register_sensitivity": ({k: np.asarray(v).tolist() for k, v in sens.items()} if isinstance(sens, dict)
                                       else {"all": np.asarray(sens).tolist()})}
    from sysarray.atomic import write_json

    write_json(os.path.join(out, RESULT_FILE), result)
    return result


__all__ = ["BIT_WEIGHTINGS", "DEFAULT_UNIFORM_MIX", "SENSITIVITY_TARGETS", "FaultSpace", "check_uniform_mix",
           "compare_samplers", "draw", "estimate_fraction", "fold_to_array", "importance_distribution", "pe_sensitivity",
           "run_importance", "sensitivity_by_site", "sensitivity_distribution", "site_weights", "summarize_draws"]
