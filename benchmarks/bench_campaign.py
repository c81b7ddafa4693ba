"""Fault-campaign throughput: chips per minute, cost per chip over one fault-free inference, and
parallel efficiency on 2 workers.

Run from the repository root::

    .venv/bin/python benchmarks/bench_campaign.py [--quick] [--chips N] [--wait-idle SECONDS] [--out DIR]

Two workloads, both on a 16x16 WS chip (fast engine), a population of chips with 1% faulty PEs,
psum stuck-at faults on random bits and values (``RateGrid``, one rate):

- LeNet-5 on the full ``digits`` test split (359 images); the model is untrained and seeded
  (the cost does not depend on the weights), calibrated on the digits training images;
- ResNet-20 on 1,000 random 3x32x32 images (uniform in [0, 1], seeded; CIFAR-10 is not needed),
  untrained and seeded, calibrated on 256 other random images.

For each it measures, in one run:

- ``fault_free_s``: one fault-free inference of the same images in this process with one torch
  and one numba thread, the unit of the cost ratio: the mean of at least ``--repeats`` runs and
  about ``MIN_UNIT_S`` of them, timed before the campaigns and again after them, pooled. A mean,
  as the cost per chip it divides is one (a campaign's wall over its chips); the ratio over the
  median is in the JSON too (``cost_per_chip_over_fault_free_median``). Before it, one untimed
  faulty inference of 16 images loads the faulty path's kernels in this process;
- a campaign with 1 worker in this process (one torch and one numba thread) and a campaign with 2
  worker processes (``run_campaign(workers=2)``, one thread each), each end to end (setup, one
  fault-free run, the journal and result files included) in a fresh directory. The workers fork
  from the campaign fork server, which imports torch and warms the kernels once per process
  (``sysarray campaign`` starts it before loading the model): it is started before the timed
  campaigns and its start-up is reported on its own (``fork_server_start_s``);
- both campaigns as a pair, repeated five times (alternating) when a pair takes under
  ``SHORT_PAIR_S`` (``--campaign-repeats``), each wall the median run's, and around each 1-worker
  campaign a short fault-free unit (about ``PAIR_UNIT_S`` of runs, at least one, before it and
  after it; the first pair's also takes the unit timed before the campaigns, the last pair's the
  one after);
- ``chips_per_min`` for both; ``cost_per_chip_over_fault_free`` = the median over the pairs of
  (1-worker wall / chips) / that pair's short unit (target at most 1.2), and
  ``parallel_efficiency`` = the median over the pairs of (1-worker wall / 2-worker wall) / 2
  (target at least 0.85): each a ratio of measurements seconds apart, since a shared machine's
  speed drifts within a minute. The figures from the median walls and the pooled unit are in
  the JSON too (``..._pooled``, ``..._of_median_walls``). The 2-worker wall includes starting
  the worker processes; ``parallel_efficiency_steady`` compares the chip rates after the first
  chip finished (workers running). ``faulty_over_fault_free`` (the engine's faulty inference over
  the fault-free one, from the per-chip times) and ``campaign_overhead`` (1-worker wall over the
  sum of per-chip times) split the cost ratio into the engine's share and the campaign's own.

Writes ``OUT/bench_campaign.json``.
"""
from __future__ import annotations

import argparse
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import sysarray.runtime

TUNING = sysarray.runtime.configure()  # a program: tuned first, before torch loads

import torch  # noqa: E402

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (CpuMonitor, IdleGate, format_table, load_average, provenance,  # noqa: E402
                                summarize_times, time_round_robin, write_json)

REPO = Path(__file__).resolve().parent.parent
TARGET_COST = 1.2
TARGET_EFFICIENCY = 0.85
MIN_UNIT_S = 2.0  # seconds of timed fault-free runs at least: a few short runs alone drift with the machine
SHORT_PAIR_S = 15.0  # seconds: a 1-worker + 2-worker campaign pair shorter than this is run five times
PAIR_UNIT_S = 0.5  # seconds of fault-free runs right before and after each 1-worker campaign
PE_RATE = 0.01


def workload(name: str, seed: int, quick: bool):
    """``(ProgramTask, description)``: an untrained seeded model lowered on calibration images."""
    from accel_models.data import load_dataset
    from accel_models.lowering import lower
    from accel_models.zoo import build_model
    from mitigation.campaign import ProgramTask

    torch.manual_seed(seed)
    if name == "lenet5":
        data = load_dataset("digits")
        model = build_model("lenet5", data.input_shape, 10).eval()
        program = lower(model, data.train_x[:512])
        images, labels = data.test_x, data.test_y
        desc = f"LeNet-5 (untrained, seed {seed}), digits test split"
    else:
        gen = torch.Generator().manual_seed(seed)
        n = 200 if quick else 1000
        model = build_model("resnet20", (3, 32, 32), 10).eval()
        program = lower(model, torch.rand(256, 3, 32, 32, generator=gen))
        images = torch.rand(n, 3, 32, 32, generator=gen)
        labels = torch.randint(0, 10, (n,), generator=gen)
        desc = f"ResNet-20 (untrained, seed {seed}), {n} random 3x32x32 images"
    return ProgramTask(program, images, labels, name), f"{desc} ({len(labels)} images)"


def measure(name: str, chips: int, seed: int, quick: bool, repeats: int, gate: IdleGate, campaign_repeats: int) -> dict:
    import sysarray as sa
    from mitigation.campaign import FaultGroup, RateGrid, run_campaign
    from sysarray.runtime import threads

    task, desc = workload(name, seed, quick)
    cfg = sa.ArrayConfig(16, 16, "ws")
    population = RateGrid([PE_RATE], chips, seed, [FaultGroup(("psum",))])
    # One torch and one numba thread, as in every campaign worker: the 1-worker campaign and the unit run as a worker does.
    with threads(1):
        # Untimed warm-up of the faulty path's kernels, once per process, which would otherwise fall on the first campaign.
        task.program.run(task.images[:16], cfg, faults=population.chip(0, cfg)[0], count_changes=False)
        t0 = time.perf_counter()
        task.program.run(task.images, cfg, count_changes=False)
        repeats = max(repeats, math.ceil(MIN_UNIT_S / max(1e-3, time.perf_counter() - t0)))
        unit = lambda: time_round_robin(  # noqa: E731
            {"fault_free": lambda: task.program.run(task.images, cfg, count_changes=False)}, repeats)["fault_free"]
        clean_before, cont_clean = gate.measure(unit)

        def campaign(workers: int) -> dict:
            folder = tempfile.mkdtemp(prefix=f"bench-campaign-{name}-")
            try:
                t0 = time.perf_counter()
                run = run_campaign(task, population, folder + "/c", cfg, workers=workers)
                wall = time.perf_counter() - t0
                assert run.evaluated == chips
                with open(folder + "/c/timings.csv") as f:
                    chip_s = sum(float(line.split(",")[1]) for line in f.readlines()[1:])
                # after the first chip every worker is running: the steady state
                steady = (chips - 1) / max(1e-9, run.seconds - run.setup_s - run.first_result_s)
                return {"wall_s": wall, "setup_s": run.setup_s, "first_result_s": run.first_result_s,
                        "chip_seconds_sum": chip_s, "steady_chips_per_s": steady}
            finally:
                shutil.rmtree(folder, ignore_errors=True)

        # Alternating pairs (1 worker, then 2), five when short: each figure is a median over the pairs.
        ones, twos, conts, pair_units = [], [], [], []
        # A short unit right around each 1-worker campaign: the pair's cost divides by the speed of the same seconds.
        pair_repeats = max(1, math.ceil(PAIR_UNIT_S / max(1e-3, clean_before["median_s"])))
        short_unit = lambda: time_round_robin(  # noqa: E731
            {"fault_free": lambda: task.program.run(task.images, cfg, count_changes=False)}, pair_repeats,
            warmup=0)["fault_free"]["times_s"]
        while True:
            before = short_unit()
            one_run, cont_one = gate.measure(lambda: campaign(1))
            after = short_unit()
            two_run, cont_two = gate.measure(lambda: campaign(2))
            ones.append(one_run)
            twos.append(two_run)
            conts.append((cont_one, cont_two))
            pair_units.append(before + after)
            if not campaign_repeats:
                campaign_repeats = 5 if one_run["wall_s"] + two_run["wall_s"] < SHORT_PAIR_S else 1
            if len(ones) >= campaign_repeats:
                break
        # The unit again after the campaigns, pooled with the first: a unit timed only before a long campaign skews the ratio.
        clean_after, _ = gate.measure(unit)
    # The first and last pairs' units also take the adjacent long units: a single long pair's few runs are noisy.
    pair_units[0] = clean_before["times_s"] + pair_units[0]
    pair_units[-1] = pair_units[-1] + clean_after["times_s"]
    pair_units = [sum(u) / len(u) for u in pair_units]
    clean = summarize_times(clean_before["times_s"] + clean_after["times_s"], clean_before.get("first_call_s"))
    clean["median_s_before"], clean["median_s_after"] = clean_before["median_s"], clean_after["median_s"]
    median_run = lambda runs: sorted(runs, key=lambda r: r["wall_s"])[(len(runs) - 1) // 2]  # noqa: E731
    one_run, two_run = median_run(ones), median_run(twos)
    cont_one, cont_two = conts[ones.index(one_run)][0], conts[twos.index(two_run)][1]
    fault_free_s = sum(clean["times_s"]) / len(clean["times_s"])
    one, two = one_run["wall_s"], two_run["wall_s"]
    pair_costs = [(r["wall_s"] / chips) / u for r, u in zip(ones, pair_units)]
    pair_efficiencies = [a["wall_s"] / b["wall_s"] / 2.0 for a, b in zip(ones, twos)]
    return {
        "cost_per_chip_over_fault_free": statistics.median_low(pair_costs),
        "cost_per_chip_over_fault_free_pairs": pair_costs,
        "parallel_efficiency": statistics.median_low(pair_efficiencies),
        "parallel_efficiency_pairs": pair_efficiencies,
        "fault_free_pair_units_s": pair_units,
        "campaign_1_worker": one_run, "campaign_2_workers": two_run,
        "campaign_1_worker_walls_s": [r["wall_s"] for r in ones], "campaign_2_workers_walls_s": [r["wall_s"] for r in twos],
        "faulty_inference_mean_s": one_run["chip_seconds_sum"] / chips,
        "faulty_over_fault_free": one_run["chip_seconds_sum"] / chips / fault_free_s,
        "campaign_overhead": one / one_run["chip_seconds_sum"],
        "parallel_efficiency_steady": two_run["steady_chips_per_s"] / one_run["steady_chips_per_s"] / 2.0,
        "workload": name, "description": desc, "array": "16x16 ws", "pe_rate": PE_RATE, "fault_model": "psum, random bits/values",
        "chips": chips, "fault_free": clean, "fault_free_s": fault_free_s,
        "campaign_1_worker_s": one, "campaign_2_workers_s": two,
        "chips_per_min_1_worker": 60.0 * chips / one, "chips_per_min_2_workers": 60.0 * chips / two,
        # the same figures from the median walls and the pooled unit, for comparison with the paired ones
        "cost_per_chip_over_fault_free_pooled": (one / chips) / fault_free_s,
        "cost_per_chip_over_fault_free_median": (one / chips) / clean["median_s"],
        "parallel_efficiency_of_median_walls": (one / two) / 2.0,
        "contention": {"fault_free": cont_clean, "1_worker": cont_one, "2_workers": cont_two},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: few chips, 200 ResNet images")
    ap.add_argument("--chips", type=int, help="chips per campaign (default 200 LeNet-5 / 40 ResNet-20; quick 16 / 4)")
    ap.add_argument("--repeats", type=int, default=5,
                    help=f"timed fault-free runs: at least this many (default 5) and about {MIN_UNIT_S:g} s of them")
    ap.add_argument("--campaign-repeats", type=int, default=0, metavar="N",
                    help=f"pairs of timed campaigns (1 worker, 2 workers), medians reported (default 0: five when a "
                         f"pair takes under {SHORT_PAIR_S:g} s, else one)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workloads", default="lenet5,resnet20", help="comma-separated: lenet5, resnet20")
    ap.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                    help="shared machines: wait (at most SECONDS over the run) until other processes use < 5%% of "
                         "the CPUs before each measurement, and redo a disturbed one (default 0: never wait)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    if args.campaign_repeats < 0:
        ap.error(f"--campaign-repeats must be 0 (auto) or a positive count. Got {args.campaign_repeats} instead.")
    default_chips = {"lenet5": 16 if args.quick else 200, "resnet20": 4 if args.quick else 40}
    gate = IdleGate(args.wait_idle)
    monitor = CpuMonitor()
    load_start = load_average()
    # The workers' fork server starts once per process: kept out of the campaign walls and reported on its own.
    from mitigation.campaign import start_workers_early

    t0 = time.perf_counter()
    start_workers_early(wait=True)
    fork_server_s = time.perf_counter() - t0
    print(f"campaign fork server started in {fork_server_s:.1f} s (once per process; not in the campaign walls)")
    results = []
    for name in args.workloads.split(","):
        if name not in default_chips:
            ap.error(f"unknown workload {name!r}; choose lenet5 and/or resnet20")
        results.append(measure(name, args.chips or default_chips[name], args.seed, args.quick, args.repeats, gate,
                               args.campaign_repeats))
    rows = [(r["workload"], r["chips"], r["fault_free_s"] * 1e3, r["faulty_inference_mean_s"] * 1e3,
             r["campaign_1_worker_s"], r["campaign_2_workers_s"],
             round(r["chips_per_min_1_worker"]), round(r["chips_per_min_2_workers"]),
             round(r["cost_per_chip_over_fault_free"], 2), TARGET_COST, round(r["campaign_overhead"], 3),
             round(r["parallel_efficiency"], 3), round(r["parallel_efficiency_steady"], 3), TARGET_EFFICIENCY)
            for r in results]
    print(format_table(["workload", "chips", "fault-free ms", "faulty ms", "1 worker s", "2 workers s", "chips/min 1w",
                        "chips/min 2w", "cost/chip / fault-free", "target", "overhead", "efficiency 2w",
                        "steady", "target"], rows,
                       title=f"Fault campaigns, 16x16 WS, {PE_RATE:.0%} faulty PEs (psum), fast engine"))
    cont = monitor.stop()
    if cont and cont["other_frac"] + cont["steal_frac"] > 0.05:
        print(f"warning: other processes took {cont['other_frac']:.0%} of the CPUs during the run; figures are "
              "slowed and noisy (rerun with --wait-idle 600 on a shared machine)")
    path = Path(args.out) / "bench_campaign.json"
    write_json(path, {"benchmark": "bench_campaign", "results": results,
                      "targets": {"cost_per_chip_over_fault_free": TARGET_COST, "parallel_efficiency": TARGET_EFFICIENCY},
                      "fork_server_start_s": fork_server_s,
                      "load_average_start": load_start, "cpu_contention": cont, "waited_for_idle_s": gate.waited_s,
                      **provenance(TUNING, "quick" if args.quick else "full", REPO)})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
