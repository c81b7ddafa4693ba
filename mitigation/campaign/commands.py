"""`sysarray` subcommands for the campaign methods (registered with `sysarray.cli.subcommand`):
``campaign``, ``sweep``, ``importance`` and ``report``. Argument parsing only; the work is library calls."""
from __future__ import annotations

import argparse

from sysarray.cli import EXIT_OK, subcommand
from sysarray.faults_commands import add_fault_model_arguments


# ------------------------------------------------------------------------------------ shared options
def _add_task_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="MODEL.pt", help="checkpoint written by `sysarray train` or `sysarray import-model`")
    p.add_argument("--dataset", help="dataset to test on (default: the checkpoint's)")
    p.add_argument("--data-dir", help="directory of the dataset files")
    p.add_argument("--limit", type=int, help="use only the first N test images")
    g = p.add_argument_group("chip")
    g.add_argument("--array", default="16x16", metavar="RxC", help="array rows x columns (default 16x16)")
    g.add_argument("--dataflow", choices=("ws", "os", "is"), default="ws", help="default ws")
    g.add_argument("--psum-bits", type=int, default=32, help="partial-sum register width, 17..32 (default 32)")
    g.add_argument("--bypass", action="store_true", help="faulty PEs are bypassed (fault-aware pruning hardware)")
    g.add_argument("--engine", choices=("fast", "cycle"), default="fast", help="default fast")


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("running")
    g.add_argument("--critical-drop", type=float, default=None,
                   help="a chip (fault) is critical when its accuracy drop exceeds this fraction (default 0.05)")
    g.add_argument("--confidence", type=float, default=0.95, help="confidence level of the intervals (default 0.95)")
    g.add_argument("--workers", type=int, help="local worker processes (default: all usable cores; 1: in this process)")
    g.add_argument("--scheduler", metavar="ADDRESS",
                   help="run on a Dask distributed cluster: a scheduler address (tcp://host:8786) or 'local' for a "
                        "local cluster of --workers processes; results are identical to the local run")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("-o", "--out", required=True, metavar="DIR",
                   help="campaign directory (created; rerunning the same command resumes it)")


def _array(args: argparse.Namespace):
    from sysarray.config import ArrayConfig, parse_array

    rows, cols = parse_array(args.array)
    return ArrayConfig(rows, cols, args.dataflow, psum_bits=args.psum_bits, bypass=args.bypass)


def _task(args: argparse.Namespace):
    from mitigation.campaign import CheckpointTask

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be a positive integer. Got {args.limit} instead.")
    return CheckpointTask(args.model, args.dataset, args.data_dir, args.limit)


def _run_options(args: argparse.Namespace) -> dict:
    from mitigation.campaign import DEFAULT_CRITICAL_DROP

    if args.scheduler is not None and args.scheduler != "local" and args.workers is not None:
        raise ValueError("--workers applies to local runs and --scheduler local; a remote Dask cluster has its own workers.")
    return {"engine": args.engine, "workers": args.workers, "scheduler": args.scheduler, "progress": not args.quiet,
            "confidence": args.confidence,
            "critical_drop": DEFAULT_CRITICAL_DROP if args.critical_drop is None else args.critical_drop}


def _parse_rates(text: str) -> list[float]:
    try:
        rates = [float(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--rates must be comma-separated numbers within [0, 1], e.g. 0,0.001,0.01. Got {text!r} instead.") from None
    if not rates:
        raise ValueError(f"--rates must list at least one rate. Got {text!r} instead.")
    return rates


def _print_run(run) -> None:
    if run.evaluated == 0:
        print(f"nothing to do: all {run.chips} chips of {run.directory} are already done")
    else:
        resumed = f" ({run.already_done} were already done)" if run.already_done else ""
        print(f"evaluated {run.evaluated} chips in {run.seconds:.1f} s{resumed}; "
              f"fault-free accuracy {run.clean_accuracy:.4f}")
    print(f"wrote {run.results}")


# ------------------------------------------------------------------------------------ campaign
@subcommand
def add_campaign_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "campaign", help="run a model on a population of faulty chips: one result row per chip",
        description="Evaluate a checkpoint on a chip population: for every fault group and rate, N fault maps "
                    "(replica j uses SeedSequence(seed).spawn(N)[j], the seeds of `sysarray faults generate`), or the "
                    "fault-map files of a directory. Writes DIR/manifest.json, DIR/results.csv (one row per chip, "
                    "sorted by chip id, byte-identical for any number of workers), DIR/aggregates.csv (per group "
                    "and rate, with confidence intervals), DIR/timings.csv (wall time per chip) and the journal "
                    "DIR/chips.jsonl. Each chip is written durably as it finishes: rerunning the same command after "
                    "a crash resumes; a different configuration in DIR is refused.",
        epilog="Examples: sysarray campaign --model model.pt --array 16x16 --rates 0,0.001,0.01 --chips-per-rate 20 "
               "--register psum --bits 0-31 --seed 0 -o camp/ ; sysarray campaign --model model.pt --rates 0.01 "
               "--group psum:24-31:1 --group psum:0-7:1 --margin 0.05 -o camp2/ ; "
               "sysarray campaign --model model.pt --faults-dir chips/ -o camp3/",
    )
    _add_task_arguments(p)
    g = p.add_argument_group("population")
    g.add_argument("--rates", help="fault rates, comma-separated, each in [0, 1] (PE rate, or BER with --fault-model ber)")
    g.add_argument("--chips-per-rate", type=int, help="chips per rate and group (default 20, or from --margin)")
    g.add_argument("--margin", type=float,
                   help="pick chips per rate by statistical fault injection (Leveugle et al., DATE 2009): the number "
                        "that gives a critical-chip share within +-MARGIN at --confidence")
    g.add_argument("--group", action="append", metavar="REG:BITS[:VALUE]",
                   help="a fault group, e.g. psum:24-31:1 (repeat for several; replaces --register/--bits/--value)")
    g.add_argument("--faults-dir", metavar="DIR", help="use the fault-map files of DIR as the chips instead of --rates")
    add_fault_model_arguments(p)
    _add_run_arguments(p)
    p.set_defaults(func=run_campaign_command)


def campaign_population(args: argparse.Namespace):
    """The population of ``sysarray campaign`` options (a RateGrid or FaultFiles)."""
    from mitigation.campaign import FaultFiles, FaultGroup, RateGrid
    from mitigation.campaign.stats import leveugle_sample_size
    from sysarray.faults_commands import fault_model_settings

    if args.faults_dir:
        if args.rates or args.chips_per_rate or args.margin or args.group:
            raise ValueError("--faults-dir takes the chips from files; leave out --rates, --chips-per-rate, --margin and --group.")
        return FaultFiles(args.faults_dir)
    if not args.rates:
        raise ValueError("A campaign needs --rates (e.g. --rates 0,0.001,0.01) or --faults-dir DIR.")
    if args.chips_per_rate is not None and args.margin is not None:
        raise ValueError("Give either --chips-per-rate or --margin, not both.")
    n = args.chips_per_rate if args.margin is None else leveugle_sample_size(args.margin, args.confidence)
    if n is None:
        n = 20
    if args.group:
        groups = [FaultGroup.parse(g) for g in args.group]
    else:
        s = fault_model_settings(args)
        groups = [FaultGroup(s["registers"], None if s["bits"] is None else tuple(s["bits"]), s["values"])]
    return RateGrid(_parse_rates(args.rates), n, args.seed, groups, method=args.fault_model, exact=not args.bernoulli,
                    faults_per_pe=args.faults_per_pe, n_clusters=args.clusters)


def run_campaign_command(args: argparse.Namespace) -> int:
    from mitigation.campaign import run_campaign

    population = campaign_population(args)
    cfg = _array(args)
    print(f"campaign: {population.size} chips on a {cfg} array -> {args.out}")
    run = run_campaign(_task(args), population, args.out, cfg, **_run_options(args))
    _print_run(run)
    _print_aggregates(args.out)
    return EXIT_OK


def _print_aggregates(directory: str) -> None:
    import csv
    import os

    path = os.path.join(directory, "aggregates.csv")
    if not os.path.exists(path):
        return
    with open(path) as f:
        rows = list(csv.DictReader(f))
    if not rows or "rate" not in rows[0]:
        return
    print(f"{'group':<22} {'rate':>8} {'chips':>5}  {'mean accuracy [CI]':<26} {'critical share':>14}")
    for r in rows:
        print(f"{r['group']:<22} {float(r['rate']):>8.4g} {r['chips']:>5}  "
              f"{float(r['mean_accuracy']):.4f} [{float(r['mean_accuracy_lo']):.4f}, {float(r['mean_accuracy_hi']):.4f}]"
              f"   {float(r['critical_share']):>10.3f}")


# ------------------------------------------------------------------------------------ sweep
def _add_site_arguments(p: argparse.ArgumentParser, default_value: str) -> None:
    g = p.add_argument_group("faults")
    g.add_argument("--register", default="psum", help="registers to sweep: weight, act, psum or a list (default psum)")
    g.add_argument("--bits", help="bits to sweep, e.g. 31 or 24-31 (default: every bit of the register)")
    g.add_argument("--value", default=default_value, help=f"stuck value: 0, 1 or random (= both) (default {default_value})")
    g.add_argument("--seed", type=int, default=0, help="seed of the sampled PEs / draws (default 0)")


def _sites(args: argparse.Namespace) -> tuple:
    from sysarray.cliargs import parse_bits, parse_registers, parse_values

    return parse_registers(args.register), (parse_bits(args.bits) if args.bits else None), parse_values(args.value)


@subcommand
def add_sweep_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "sweep", help="single-fault sweep: accuracy drop of one stuck bit at every PE (heatmap, bit sensitivity)",
        description="For each register, bit and stuck value, inject one stuck bit at every PE (or --budget PEs drawn "
                    "with --seed) and record the accuracy drop: a campaign of one-fault chips (resumable, parallel). "
                    "`sysarray report DIR` draws the PE-array heatmaps and the drop versus bit position.",
        epilog="Example: sysarray sweep --model model.pt --register psum --bits 31 --value 1 -o sweep/",
    )
    _add_task_arguments(p)
    _add_site_arguments(p, "1")
    p.add_argument("--budget", type=int, help="PEs per register/bit/value, drawn without replacement (default: every PE)")
    _add_run_arguments(p)
    p.set_defaults(func=run_sweep_command)


def run_sweep_command(args: argparse.Namespace) -> int:
    from mitigation.sweep import run_sweep

    registers, bits, values = _sites(args)
    run = run_sweep(_task(args), _array(args), args.out, registers, bits, values, budget=args.budget, seed=args.seed,
                    **_run_options(args))
    _print_run(run)
    return EXIT_OK


# ------------------------------------------------------------------------------------ importance
@subcommand
def add_importance_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "importance", help="importance sampling of critical faults (PE sensitivity) versus uniform sampling",
        description="Estimate the share of critical single faults (accuracy drop above --critical-drop) by drawing "
                    "--budget faults with probability proportional to PE sensitivity (one backward pass, sum of "
                    "|w dL/dw| over the weights mapped to each PE) times a bit weighting, mixed with uniform "
                    "sampling, and --budget faults uniformly; injects the distinct ones and writes DIR/importance.json "
                    "(precision of both samplers, unbiased estimates with confidence intervals).",
        epilog="Example: sysarray importance --model model.pt --register psum --value 1 --budget 100 -o imp/",
    )
    _add_task_arguments(p)
    _add_site_arguments(p, "random")
    p.add_argument("--budget", type=int, default=100, help="draws per sampler (default 100)")
    p.add_argument("--uniform-mix", type=float, default=0.1, help="share of uniform sampling in the mixture (default 0.1)")
    p.add_argument("--bit-weighting", choices=("uniform", "linear", "exponential"), default="exponential",
                   help="weight of a bit by significance (default exponential)")
    p.add_argument("--sensitivity", choices=("wgrad", "grad"), default="wgrad", help="|w dL/dw| (default) or |dL/dw|")
    p.add_argument("--calibration-images", type=int, default=256, help="training images of the backward pass (default 256)")
    _add_run_arguments(p)
    p.set_defaults(func=run_importance_command)


def run_importance_command(args: argparse.Namespace) -> int:
    from mitigation.importance import run_importance

    registers, bits, values = _sites(args)
    res = run_importance(_task(args), _array(args), args.out, registers, bits, values, budget=args.budget,
                         uniform_mix=args.uniform_mix, bit_weighting=args.bit_weighting, sensitivity=args.sensitivity,
                         calibration_images=args.calibration_images, seed=args.seed, **_run_options(args))
    for k in ("importance", "uniform"):
        r = res[k]
        print(f"{k:<10} precision {r['precision']:.3f} ({r['critical_draws']}/{r['draws']} draws critical, "
              f"{r['distinct_critical']} distinct); critical fraction {r['estimate']:.4f} "
              f"[{r['estimate_lo']:.4f}, {r['estimate_hi']:.4f}]")
    print(f"wrote {args.out}/importance.json")
    return EXIT_OK


# ------------------------------------------------------------------------------------ report
@subcommand
def add_report_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help="plots and a Markdown summary of a campaign, sweep or importance directory",
        description="Write DIR/report.md with PNG plots: accuracy versus fault rate with confidence bands per fault "
                    "group and the aggregate table (campaigns); the PE-array heatmap and the drop versus bit "
                    "position (sweeps); the PE sensitivity and samplers' table (importance).",
        epilog="Example: sysarray report camp/",
    )
    p.add_argument("dir", metavar="DIR", help="a directory written by sysarray campaign, sweep or importance")
    p.set_defaults(func=run_report_command)


def run_report_command(args: argparse.Namespace) -> int:
    from mitigation.report import write_report

    print(f"wrote {write_report(args.dir)}")
    return EXIT_OK
