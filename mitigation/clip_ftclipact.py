"""FT-ClipAct (Hoang, Hanif, Shafique, DATE 2020, section IV): layer-wise clipping thresholds
found by an interval search scored by fault injection (docs/clipping.md, "FT-ClipAct").

Steps and the function of each:

1. profile every activation's maximum on the training part (:func:`mitigation.clipping.profile_maxima`);
2. for each activation in forward order, an interval search on ``[0, max]`` (:func:`interval_search`):
   ``candidates`` equally spaced thresholds including both ends (:func:`candidate_thresholds`),
   each scored by the AUC of accuracy over an evenly spaced fault-rate grid
   (:meth:`mitigation.clipping.FaultSetting.auc`), the interval narrowed to the best candidate's
   neighbours (:func:`next_interval`) until neighbouring candidates score within ``tolerance``
   (after ``min_rounds``) or ``max_rounds`` are done;
3. clip the activation at the chosen threshold and profile the maxima of the later activations
   again (:func:`ftclipact`), which set their search intervals.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch.nn as nn
from tqdm.auto import tqdm

from accel_models.clipact import apply_clipping, make_spec
from mitigation.clipping import (
    CALIBRATION_IMAGES, DEPLOY_POLICIES, FaultSetting, _granularities, lower_clipped, profile_maxima,
    register_clip_method, split_for_selection,
)
from mitigation.weightfaults import float_accuracy
from sysarray.validation import check_choice, check_instance, check_int, check_positive_int, is_number


def candidate_thresholds(lo: float, hi: float, n: int) -> list[float]:
    """``n`` equally spaced thresholds on ``[lo, hi]``, both ends included (the paper's grid)."""
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def best_index(scores: Sequence[float]) -> int:
    """The best-scoring candidate; of equal scores the highest threshold (the last index): a tie
    is no evidence that a tighter threshold helps, and a looser one costs less fault-free accuracy."""
    s = np.asarray(scores, dtype=float)
    return int(np.flatnonzero(s == s.max())[-1])


def next_interval(cands: Sequence[float], b: int) -> tuple[float, float]:
    """The next round's interval: the best candidate's two neighbours (the first two or the last
    two candidates when the best is an end)."""
    if b == 0:
        return cands[0], cands[1]
    if b == len(cands) - 1:
        return cands[-2], cands[-1]
    return cands[b - 1], cands[b + 1]


def converged(scores: Sequence[float], tolerance: float) -> bool:
    """Whether every two neighbouring candidates score within ``tolerance`` points (an ineligible,
    ``-inf`` candidate never is)."""
    s = np.asarray(scores, dtype=float)
    return bool(np.isfinite(s).all() and np.abs(np.diff(s)).max() <= tolerance)


def interval_search(score: Callable[[float], float], hi: float, *, candidates: int, min_rounds: int, max_rounds: int,
                    tolerance: float, on_round: Callable[[], None] | None = None) -> tuple[float, float, list[dict], bool]:
    """The search on ``[0, hi]``: returns ``(threshold, its score, rounds, converged)``, the
    threshold the best scored over all rounds (ties to the higher threshold, :func:`best_index`)."""
    lo = 0.0
    best_t, best_s = hi, -math.inf
    rounds: list[dict] = []
    done = False
    for r in range(max_rounds):
        cands = candidate_thresholds(lo, hi, candidates)
        s = [score(c) for c in cands]
        if on_round is not None:
            on_round()
        b = best_index(s)
        rounds.append({"candidates": cands, "scores": s, "best": b})
        if s[b] > best_s or (s[b] == best_s and cands[b] > best_t):
            best_t, best_s = cands[b], s[b]
        lo, hi = next_interval(cands, b)
        done = converged(s, tolerance)
        if r + 1 >= min_rounds and done:
            break
    return best_t, best_s, rounds, done


@register_clip_method("ftclipact")
def ftclipact(model: nn.Module, dataset, *, seed: int = 0, progress: bool = True, faults: FaultSetting | None = None,
              calibration_images: int = 256, profile_images: int = CALIBRATION_IMAGES, val_fraction: float = 0.2,
              candidates: int = 4, min_rounds: int = 3, max_rounds: int = 4, tolerance: float = 0.2,
              policy: str = "zero", clean_drop: float = 0.5, scorer: Callable | None = None) -> tuple[dict, dict]:
    """FT-ClipAct's layer-by-layer interval search.

    The training split is cut (``val_fraction``, ``seed``) into a training part, whose first
    ``profile_images`` images are profiled, and a validation part, whose first
    ``calibration_images`` images score the candidates under ``faults`` (default
    :class:`FaultSetting` with its five bit error rates 1e-7 ... 3e-5, the paper's, and 5
    repetitions). Every activation starts zero-clipped at its profiled maximum. For each
    activation in forward order: :func:`interval_search` on ``[0, max]`` with ``candidates``
    points a round, ``min_rounds`` to ``max_rounds`` rounds and the stopping ``tolerance``
    (accuracy points of AUC); the activation is clipped at the threshold found, and the later
    activations' maxima are profiled again with it (and every earlier one) clipped, unclipped
    themselves. ``scorer(model, program) -> points`` replaces the fault-injection score (tests,
    other metrics).

    ``clean_drop`` (accuracy points, default 0.5) is a guard in neither the paper nor the authors'
    code: a candidate whose clipped float model loses more than ``clean_drop`` points of fault-free
    accuracy on the validation part, against the unclipped model, scores ``-inf`` (never chosen,
    not fault-injected); the interval's upper end, the profiled maximum, is always eligible.
    ``math.inf`` turns it off. ``history`` records, per layer, the maximum, every round's
    candidates, scores, clean accuracies and best index, and every profile.
    """
    faults = faults if faults is not None else FaultSetting(seed=seed)
    check_instance(faults, FaultSetting, "faults", "ftclipact")
    min_rounds = check_positive_int(min_rounds, "min_rounds", "ftclipact")
    max_rounds = check_int(max_rounds, "max_rounds", "ftclipact", lo=min_rounds)
    candidates = check_int(candidates, "candidates", "ftclipact", lo=3)
    profile_images = check_positive_int(profile_images, "profile_images", "ftclipact")
    calibration_images = check_positive_int(calibration_images, "calibration_images", "ftclipact")
    if not is_number(clean_drop) or not clean_drop >= 0:
        message = (f"The 'clean_drop' argument of ftclipact must be a number of accuracy points >= 0 "
                   f"(math.inf turns the guard off). Got {clean_drop!r} instead.")
        raise (ValueError if is_number(clean_drop) else TypeError)(message)
    if not is_number(tolerance) or not tolerance >= 0:
        raise ValueError(f"The 'tolerance' argument of ftclipact must be a number of accuracy points >= 0. "
                         f"Got {tolerance!r} instead.")
    clean_drop = float(clean_drop)
    policy = check_choice(policy, "policy", "ftclipact", DEPLOY_POLICIES)
    grans = _granularities(model, "layer", "ftclipact")
    names = list(grans)
    tx, _, vx, vy = split_for_selection(dataset, val_fraction, seed, "ftclipact")
    px = tx[:profile_images]
    x, y = vx[:calibration_images], vy[:calibration_images]
    baseline = 100 * float_accuracy(model, vx, vy)

    def clipped(thresholds: dict) -> nn.Module:
        spec = make_spec(model, thresholds, policy=policy, granularity="layer")
        return apply_clipping(copy.deepcopy(model), spec).eval()

    def profile(chosen: dict) -> dict[str, float]:
        """Maxima of the activations not yet chosen, with the chosen ones clipped."""
        base = clipped(chosen) if chosen else model
        rest = {n: g for n, g in grans.items() if n not in chosen}
        maxima = {n: float(t) for n, t in profile_maxima(base, px, rest).items()}
        history["profiles"].append({"clipped": dict(chosen), "maxima": dict(maxima)})
        return maxima

    history: dict[str, Any] = {"layers": {}, "profiles": [], "faults": faults.to_dict(), "clean_baseline": baseline,
                               "clean_drop": clean_drop}
    chosen: dict[str, float] = {}
    maxima = profile(chosen)
    bar = tqdm(total=len(names) * max_rounds, desc="ftclipact", unit="round", disable=not progress, leave=False)
    for name in names:
        hi = maxima[name]
        clean_of: dict[float, float] = {}
        score_of: dict[float, float] = {}

        def score(t: float, name=name, hi=hi, clean_of=clean_of, score_of=score_of) -> float:
            if t not in score_of:
                m = clipped({**maxima, **chosen, name: t})
                clean_of[t] = 100 * float_accuracy(m, vx, vy)
                if t != hi and clean_of[t] < baseline - clean_drop:
                    score_of[t] = -math.inf  # costs too much fault-free accuracy: never chosen, not fault-injected
                elif scorer is not None:
                    score_of[t] = float(scorer(m, lower_clipped(m, dataset)))
                else:
                    score_of[t] = faults.auc(faults.target(m, dataset), x, y)
            return score_of[t]

        t, s, rounds, done = interval_search(score, hi, candidates=candidates, min_rounds=min_rounds,
                                             max_rounds=max_rounds, tolerance=tolerance, on_round=lambda: bar.update(1))
        bar.update(max_rounds - len(rounds))
        for rnd in rounds:
            rnd["clean"] = [clean_of[c] for c in rnd["candidates"]]
        chosen[name] = t
        history["layers"][name] = {"max": hi, "threshold": t, "score": s, "clean": clean_of[t], "rounds": rounds,
                                   "converged": done}
        later = names[names.index(name) + 1:]
        if later:
            maxima = {**maxima, **profile(chosen)}
    bar.close()
    spec = make_spec(model, chosen, policy=policy, granularity="layer", method="ftclipact",
                     settings={"calibration_images": calibration_images, "profile_images": profile_images,
                               "val_fraction": val_fraction, "candidates": candidates, "min_rounds": min_rounds,
                               "max_rounds": max_rounds, "tolerance": tolerance, "clean_drop": clean_drop,
                               "faults": faults.to_dict()})
    return spec, history


__all__ = ["best_index", "candidate_thresholds", "converged", "ftclipact", "interval_search", "next_interval"]
