"""Importance sampling of critical faults (ISimDL) against exhaustive ground truth, and
importance-guided fault-aware training against random-fault FAT.

Run from the repository root::

    .venv/bin/python benchmarks/bench_importance.py [--quick] [--draws N] [--repeats N] [--out DIR]

LeNet-5 trained on digits (seeded) runs on an 8x8 WS chip; ``--images`` test images judge a
fault (critical: accuracy drop above 0.05, the campaigns' default). Every single fault of three
fault spaces is injected (exhaustive ground truth, one fault-free trace reused by every chip):

- (a) ``weight`` and ``act`` registers, all 8 bits, stuck at 0 and 1;
- (b) ``psum`` high bits stuck at 0 and 1: bits 8-15, where this model's criticality turns from
  none to all, and bits 16-31, where every fault is critical (every sampler's precision is 1);
- (c) rare-critical spaces (under 5% critical on this model): ``psum`` bits 0-12 and ``weight`` +
  ``act`` bits 0-6, stuck at 0 and 1.

Each sampler then draws ``--draws`` faults from the exhaustive table, over ``--repeats`` seeds:
uniform; ISimDL on each register's own sensitivity (``register``, value-times-gradient ``wgrad``
or gradient ``grad``) with the bit prior off (``uniform``) or exponential; the weight-only PE
sensitivity for every register (``weights``). Reported per sampler: precision (critical draws /
draws) with its mean over seeds, the gain over uniform (ratio of mean precisions), distinct
critical faults found, the critical-fraction estimate's mean, standard deviation and interval
coverage of the exhaustive fraction. The largest possible gain, 1 / critical fraction, is shown.

Then (space (a)) stuck-at FAT on ``--fat-maps`` one-fault maps for ``--fat-epochs`` epochs, once on
critical faults the register-``grad`` sampler found and once on faults drawn uniformly (the
same number of maps and epochs: the same optimizer steps), judged on held-out chips with faults
neither saw: ``--heldout`` random chips with 3 faulty PEs each, and held-out critical single
faults. Writes ``OUT/bench_importance.json``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import sysarray.runtime

TUNING = sysarray.runtime.configure()  # a program: tuned first, before torch loads

import numpy as np  # noqa: E402

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import format_table, provenance, write_json  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SPACES = {
    "a_weight_act_all_bits": (("weight", "act"), None, (0, 1)),
    "b_psum_bits_8_15": (("psum",), list(range(8, 16)), (0, 1)),
    "b_psum_bits_16_31": (("psum",), list(range(16, 32)), (0, 1)),
    "c_rare_psum_bits_0_12": (("psum",), list(range(0, 13)), (0, 1)),
    "c_rare_weight_act_bits_0_6": (("weight", "act"), list(range(0, 7)), (0, 1)),
}
SAMPLERS = [  # (name, target, mode, bit weighting)
    ("register wgrad, bits off", "register", "wgrad", "uniform"),
    ("register wgrad, exponential", "register", "wgrad", "exponential"),
    ("register grad, bits off", "register", "grad", "uniform"),
    ("register grad, exponential", "register", "grad", "exponential"),
    ("weights wgrad, exponential", "weights", "wgrad", "exponential"),
]


def exhaustive(evaluator, space) -> tuple[np.ndarray, float]:
    """Critical flag of every fault of ``space`` (one one-fault chip each) and the seconds taken."""
    from mitigation.importance_fat import fault_map_of

    start = time.perf_counter()
    flags = np.zeros(space.size, dtype=bool)
    for f in range(space.size):
        flags[f] = bool(evaluator.outcome(fault_map_of(space, space.records(np.array([f]))))["critical"])
    return flags, time.perf_counter() - start


def sampler_stats(q, critical, draws: int, repeats: int, seed: int) -> dict:
    """Importance and uniform draws over ``repeats`` seeds from the exhaustive table."""
    from mitigation.importance import compare_samplers

    truth = float(critical.mean())
    rows = [compare_samplers(q, lambda i: critical[i], draws, seed * 1000 + s) for s in range(repeats)]
    out = {}
    for k in ("importance", "uniform"):
        prec = np.array([r[k]["precision"] for r in rows])
        est = np.array([r[k]["estimate"] for r in rows])
        cov = np.mean([r[k]["estimate_lo"] <= truth <= r[k]["estimate_hi"] for r in rows])
        out[k] = {"precision_mean": float(prec.mean()), "precision_std": float(prec.std()),
                  "distinct_critical_mean": float(np.mean([r[k]["distinct_critical"] for r in rows])),
                  "estimate_mean": float(est.mean()), "estimate_std": float(est.std()),
                  "estimate_variance": float(est.var()), "coverage": float(cov)}
    out["gain"] = out["importance"]["precision_mean"] / out["uniform"]["precision_mean"] \
        if out["uniform"]["precision_mean"] > 0 else None
    out["variance_ratio_uniform_over_importance"] = out["uniform"]["estimate_variance"] / \
        out["importance"]["estimate_variance"] if out["importance"]["estimate_variance"] > 0 else None
    return out


def fat_experiment(model, program, data, cfg, space, q, critical, images, labels, args) -> dict:
    """Importance-guided versus random-fault stuck-at FAT at equal maps and epochs."""
    import accel_models as am
    import sysarray as sa
    from mitigation.fat import stuckat_fat
    from mitigation.importance import draw
    from mitigation.importance_fat import found_critical, mean_accuracy, one_fault_maps, uniform_faults

    index = draw(q, args.fat_draws, np.random.default_rng(args.seed + 7))
    guided_ids = found_critical(index, critical[index], args.fat_maps)
    random_ids = uniform_faults(space, len(guided_ids), args.seed + 11)
    train_ids = set(guided_ids.tolist()) | set(random_ids.tolist())
    crit_ids = np.array([f for f in np.flatnonzero(critical).tolist() if f not in train_ids], dtype=np.int64)
    heldout_crit = one_fault_maps(space, np.random.default_rng(args.seed + 13).permutation(crit_ids)[:args.heldout])
    heldout_chips = [sa.FaultMap.random(cfg, 3 / (cfg.rows * cfg.cols), registers=("weight", "act"),
                                        exact=True, seed=args.seed + 100 + i) for i in range(args.heldout)]
    x, y = data.train_x, data.train_y
    out = {"maps": len(guided_ids), "epochs": args.fat_epochs, "draws": args.fat_draws,
           "guided_maps_critical": int(critical[guided_ids].sum()),
           "random_maps_critical": int(critical[random_ids].sum()),
           "heldout_chips": len(heldout_chips), "heldout_critical_faults": len(heldout_crit), "methods": {}}

    def judge(prog) -> dict:
        return {"heldout_chips": mean_accuracy(prog, images, labels, cfg, heldout_chips),
                "heldout_critical_faults": mean_accuracy(prog, images, labels, cfg, heldout_crit),
                "fault_free": prog.run(images, cfg, count_changes=False).accuracy(labels)}

    out["methods"]["none"] = {**judge(program), "steps": 0, "seconds": 0.0}
    for name, ids in (("importance-guided", guided_ids), ("random faults", random_ids)):
        trained, res = stuckat_fat(model, program, cfg, one_fault_maps(space, ids), x, y, args.fat_epochs,
                                   seed=args.seed)
        prog = am.lower(trained, calibration=data.train_x[:256])
        out["methods"][name] = {**judge(prog), "steps": res.steps, "seconds": res.seconds}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="64 images, 20 repeats, FAT 1 epoch")
    ap.add_argument("--images", type=int, default=128, help="test images judging a fault (default 128)")
    ap.add_argument("--draws", type=int, default=100, help="draws per sampler (default 100)")
    ap.add_argument("--repeats", type=int, default=50, help="seeded repetitions per sampler (default 50)")
    ap.add_argument("--epochs", type=int, default=30, help="LeNet-5 training epochs (default 30)")
    ap.add_argument("--fat-maps", type=int, default=32, help="one-fault maps FAT trains on (default 32)")
    ap.add_argument("--fat-draws", type=int, default=300, help="importance draws searching them (default 300)")
    ap.add_argument("--fat-epochs", type=float, default=4.0, help="FAT epochs (default 4)")
    ap.add_argument("--heldout", type=int, default=32, help="held-out chips and critical faults (default 32)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    if args.quick:
        args.images, args.repeats, args.fat_epochs = 64, 20, 1.0
    sysarray.runtime.set_threads(args.threads, numba_threads=sysarray.runtime.usable_cores())

    import accel_models as am
    import sysarray as sa
    from accel_models.data import load_dataset
    from accel_models.train import train_zoo_model
    from mitigation.campaign import DEFAULT_CRITICAL_DROP, Evaluator
    from mitigation.importance import FaultSpace, importance_distribution, pe_sensitivity
    from mitigation.sensitivity import register_sensitivity

    data = load_dataset("digits")
    model, _ = train_zoo_model("lenet5", data, args.epochs, args.seed)
    program = am.lower(model, calibration=data.train_x[:256])
    cfg = sa.ArrayConfig(8, 8, "ws")
    images, labels = data.test_x[:args.images], data.test_y[:args.images]
    evaluator = Evaluator.build(program, images, labels, cfg, critical_drop=DEFAULT_CRITICAL_DROP)
    cal_x, cal_y = data.train_x[:256], data.train_y[:256]
    t0 = time.perf_counter()
    sens = {("register", m): register_sensitivity(program, cal_x, cal_y, cfg, m) for m in ("wgrad", "grad")}
    sens_s = time.perf_counter() - t0
    sens[("weights", "wgrad")] = pe_sensitivity(program, cal_x, cal_y, cfg, "wgrad")

    results, rows, flags = {}, [], {}
    for key, (regs, bits, values) in SPACES.items():
        space = FaultSpace.build(cfg, regs, bits, values)
        critical, secs = exhaustive(evaluator, space)
        flags[key] = critical
        truth = float(critical.mean())
        entry = {"registers": list(regs), "bits": bits, "values": list(values), "faults": space.size,
                 "critical": int(critical.sum()), "critical_fraction": truth, "exhaustive_s": secs,
                 "max_gain": 1.0 / truth if truth > 0 else None, "samplers": {}}
        for name, target, mode, bw in SAMPLERS:
            q = importance_distribution(sens[(target, mode)], space, bw, 0.1)
            st = sampler_stats(q, critical, args.draws, args.repeats, args.seed)
            entry["samplers"][name] = st
            rows.append((key, truth, name, st["importance"]["precision_mean"], st["uniform"]["precision_mean"],
                         st["gain"], entry["max_gain"], st["importance"]["distinct_critical_mean"],
                         st["uniform"]["distinct_critical_mean"], st["importance"]["estimate_std"],
                         st["uniform"]["estimate_std"], st["importance"]["coverage"]))
        results[key] = entry
        print(f"{key}: {space.size} faults, {critical.sum()} critical ({truth:.3f}), exhaustive {secs:.0f} s",
              flush=True)
    table = format_table(["space", "critical", "sampler", "imp prec", "uni prec", "gain", "max gain", "imp crit",
                          "uni crit", "imp est sd", "uni est sd", "imp cover"], rows,
                         title=f"{args.draws} draws per sampler, mean over {args.repeats} seeds, LeNet-5 digits, "
                               f"8x8 WS")
    print(table)

    space_a = FaultSpace.build(cfg, *SPACES["a_weight_act_all_bits"])
    crit_a = flags["a_weight_act_all_bits"]
    q_a = importance_distribution(sens[("register", "grad")], space_a, "exponential", 0.1)
    fat = fat_experiment(model, program, data, cfg, space_a, q_a, crit_a, images, labels, args)
    fat_rows = [(k, v["fault_free"], v["heldout_chips"], v["heldout_critical_faults"], v["steps"], v["seconds"])
                for k, v in fat["methods"].items()]
    fat_table = format_table(["FAT", "fault-free acc", "held-out chips acc", "held-out critical faults acc", "steps",
                              "s"], fat_rows, title=f"Stuck-at FAT on {fat['maps']} one-fault maps, {fat['epochs']} "
                                                    f"epochs, space (a)")
    print(fat_table)
    write_json(Path(args.out) / "bench_importance.json", {
        "benchmark": "bench_importance", "model": "lenet5", "dataset": "digits", "array": "8x8 ws",
        "images": args.images, "critical_drop": DEFAULT_CRITICAL_DROP, "draws": args.draws, "repeats": args.repeats,
        "uniform_mix": 0.1, "sensitivity_s": sens_s, "spaces": results, "fat": fat, "table": table,
        "fat_table": fat_table, "threads": args.threads, **provenance(TUNING, "quick" if args.quick else "full", REPO)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
