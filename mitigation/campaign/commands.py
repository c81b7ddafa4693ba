"""`sysarray` subcommands for the campaign methods (registered with `sysarray.cli.subcommand`):
``campaign``, ``sweep``, ``importance`` and ``report``. Argument parsing only; the work is library calls."""
from __future__ import annotations

import argparse

from sysarray.cli import EXIT_OK, subcommand
from sysarray.cliargs import (
    add_array_arguments, add_data_arguments, add_deprecated_alias, add_device_argument, add_engine_argument,
    add_faults_dir_argument, add_limit_argument, add_model_argument, add_out_argument, add_quiet_argument,
    add_random_fault_arguments, add_seed_argument, float_within, int_at_least, open_probability, positive_int, probability,
)

SCHEDULER_TIMEOUT_S = 3.0  # long enough for a remote scheduler's handshake, short enough for a typo


# ------------------------------------------------------------------------------------ shared options
def _add_task_arguments(p: argparse.ArgumentParser) -> None:
    add_model_argument(p)
    add_data_arguments(p)
    add_limit_argument(p)
    g = p.add_argument_group("chip")
    add_array_arguments(g, bypass="faulty PEs are bypassed: the fault-aware-pruning hardware (default: faulty PEs compute)")
    add_engine_argument(g)


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("running")
    g.add_argument("--critical-drop", type=probability, default=None, metavar="FRACTION",
                   help="a chip (fault) is critical when its accuracy drop exceeds this fraction (default 0.05)")
    g.add_argument("--confidence", type=open_probability, default=0.95,
                   help="confidence level of the intervals, in (0, 1) (default 0.95)")
    g.add_argument("--workers", type=positive_int, metavar="N",
                   help="local worker processes; 1: in this process (default: all usable cores)")
    g.add_argument("--scheduler", metavar="ADDRESS",
                   help="run on a Dask distributed cluster: a scheduler address (tcp://host:8786), checked before "
                        "anything is written, or 'local' for a local cluster of --workers processes; results are "
                        "identical to the local run (default: local worker processes)")
    add_device_argument(g, cuda="every chip in this process on the GPU (no --workers, no --scheduler, the fast engine)")
    add_quiet_argument(g)
    add_out_argument(p, "dir", "DIR", "campaign directory, created if missing; rerunning the same command resumes it "
                                      "(required)")


def _array(args: argparse.Namespace):
    from sysarray.cliargs import array_config

    return array_config(args)


def _task(args: argparse.Namespace):
    from mitigation.campaign import CheckpointTask

    return CheckpointTask(args.model, args.dataset, args.data_dir, args.limit)


def check_scheduler(address: str | None) -> None:
    """Connect to the Dask scheduler at ``address`` (tcp:// or tls://) with a short timeout: a
    ValueError naming it when it cannot be reached, before any campaign directory is made."""
    import socket

    if address is None or address == "local":
        return
    text = address.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "tcp", text
    if scheme not in ("tcp", "tls"):
        return  # other transports (inproc, ucx, ...) are Dask's to reach
    host, colon, port = rest.rstrip("/").rpartition(":")
    if not colon:
        host, port = rest.rstrip("/"), "8786"
    if not port.isdigit() or not host:
        raise ValueError(f"--scheduler must be a Dask scheduler address such as tcp://host:8786, or 'local'. "
                         f"Got {address!r} instead.")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=SCHEDULER_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise ValueError(f"--scheduler {address}: no Dask scheduler answers there ({reason}); start one "
                         f"(`dask scheduler`) or use --scheduler local or --workers N. Nothing was written.") from None


def _run_options(args: argparse.Namespace, command: str) -> dict:
    from mitigation.campaign import DEFAULT_CRITICAL_DROP
    from sysarray.cliargs import resolve_device

    if args.device == "cuda":
        if args.scheduler is not None or (args.workers or 1) > 1:
            raise ValueError("--device cuda runs every chip in this process on the GPU; leave out --workers and "
                             "--scheduler.")
        if args.engine != "fast":
            raise ValueError(f"--engine {args.engine} runs on the CPU; --device cuda needs --engine fast.")
    device = resolve_device(args, command)
    if args.scheduler is not None and args.scheduler != "local" and args.workers is not None:
        raise ValueError("--workers applies to local runs and --scheduler local; a remote Dask cluster has its own workers.")
    check_scheduler(args.scheduler)
    return {"engine": args.engine, "workers": args.workers, "scheduler": args.scheduler, "progress": not args.quiet,
            "device": device,
            "confidence": args.confidence,
            "critical_drop": DEFAULT_CRITICAL_DROP if args.critical_drop is None else args.critical_drop}


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
        epilog="Examples: sysarray campaign --model model.pt --array 16x16 --rates 0,0.01,0.02 --chips-per-rate 20 "
               "--register psum --bits 0-31 --seed 0 -o camp/ ; sysarray campaign --model model.pt --rates 0.01 "
               "--group psum:24-31:1 --group psum:0-7:1 --margin 0.05 -o camp2/ ; "
               "sysarray campaign --model model.pt --faults-dir chips/ -o camp3/",
    )
    _add_task_arguments(p)
    g = add_random_fault_arguments(
        p, rate="list", title="population: fault groups x rates x replicas, or --faults-dir",
        rates_help="fault rates, comma-separated, each in [0, 1]: faulty PEs / all PEs (pe_rate, clustered) or stuck "
                   "bits / all register bits (ber); 0 is the fault-free point, and a rate that places no faulty PE "
                   "(bit) on the array is refused (required unless --faults-dir)")
    g.add_argument("--chips-per-rate", type=positive_int, metavar="N", help="chips per rate and group (default 20, or "
                                                                            "from --margin)")
    g.add_argument("--margin", type=open_probability,
                   help="pick chips per rate by statistical fault injection (Leveugle et al., DATE 2009): the number "
                        "that gives a critical-chip share within +-MARGIN at --confidence, in (0, 1) (default: none)")
    g.add_argument("--group", action="append", type=_fault_group, metavar="REG:BITS[:VALUE]",
                   help="a fault group, e.g. psum:24-31:1 (repeat for several; replaces --register/--bits/--value) "
                        "(default: one group from --register, --bits and --value)")
    add_faults_dir_argument(g, required=False, help="use the fault-map files of DIR as the chips instead of --rates "
                                                    "(default: none)")
    add_seed_argument(p, "the population: replica j of every rate and group uses SeedSequence(seed).spawn(N)[j]")
    _add_run_arguments(p)
    p.set_defaults(func=run_campaign_command)


def _fault_group(text: str):
    """An argparse type: a ``--group`` as a :class:`FaultGroup`."""
    from mitigation.campaign.populations import FaultGroup

    try:
        return FaultGroup.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).rstrip(".")) from None


def campaign_population(args: argparse.Namespace):
    """The population of ``sysarray campaign`` options (a RateGrid or FaultFiles)."""
    from mitigation.campaign import FaultFiles, FaultGroup, RateGrid
    from mitigation.campaign.stats import leveugle_sample_size
    from sysarray.cliargs import check_rates_place_faults, random_fault_settings

    if args.faults_dir:
        if args.rates or args.chips_per_rate or args.margin or args.group:
            raise ValueError("--faults-dir takes the chips from files; leave out --rates, --chips-per-rate, --margin and --group.")
        return FaultFiles(args.faults_dir)
    if not args.rates:
        raise ValueError("A campaign needs --rates (e.g. --rates 0,0.01,0.02) or --faults-dir DIR.")
    if args.chips_per_rate is not None and args.margin is not None:
        raise ValueError("Give either --chips-per-rate or --margin, not both.")
    n = args.chips_per_rate if args.margin is None else leveugle_sample_size(args.margin, args.confidence)
    if n is None:
        n = 20
    method, s = random_fault_settings(args)
    groups = args.group or [FaultGroup(s["registers"], None if s["bits"] is None else tuple(s["bits"]), s["values"])]
    cfg = _array(args)
    check_rates_place_faults(args.rates, method, s["exact"], cfg.rows, cfg.cols, cfg.psum_bits, "--rates")
    return RateGrid(args.rates, n, args.seed, groups, method=method, exact=s["exact"],
                    faults_per_pe=args.faults_per_pe, n_clusters=args.clusters)


def run_campaign_command(args: argparse.Namespace) -> int:
    from mitigation.campaign import run_campaign

    population = campaign_population(args)
    cfg = _array(args)
    options = _run_options(args, "campaign")
    print(f"campaign: {population.size} chips on a {cfg} array -> {args.out}")
    run = run_campaign(_task(args), population, args.out, cfg, **options)
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
def _add_site_arguments(p: argparse.ArgumentParser) -> None:
    add_random_fault_arguments(p, rate=None, models=("pe_rate",), extras=False, title="faults: one stuck bit per chip",
                               value_help="both values, each its own chip")


def _sites(args: argparse.Namespace) -> tuple:
    from sysarray.cliargs import fault_choices

    return fault_choices(args)


@subcommand
def add_sweep_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "sweep", help="single-fault sweep: accuracy drop of one stuck bit at every PE (heatmap, bit sensitivity)",
        description="For each register, bit and stuck value, inject one stuck bit at every PE (or --pes-per-site PEs "
                    "drawn with --seed) and record the accuracy drop: a campaign of one-fault chips (resumable, "
                    "parallel). `sysarray report DIR` draws the PE-array heatmaps and the drop versus bit position.",
        epilog="Example: sysarray sweep --model model.pt --register psum --bits 31 --value 1 -o sweep/",
    )
    _add_task_arguments(p)
    _add_site_arguments(p)
    p.add_argument("--pes-per-site", type=positive_int, metavar="N",
                   help="PEs per register/bit/value, drawn without replacement with --seed (default: every PE)")
    add_deprecated_alias(p, "--budget", "pes_per_site", "--pes-per-site N", type=positive_int, metavar="N")
    add_seed_argument(p, "the sampled PEs of --pes-per-site")
    _add_run_arguments(p)
    p.set_defaults(func=run_sweep_command)


def run_sweep_command(args: argparse.Namespace) -> int:
    from mitigation.sweep import run_sweep

    registers, bits, values = _sites(args)
    options = _run_options(args, "sweep")
    run = run_sweep(_task(args), _array(args), args.out, registers, bits, values, budget=args.pes_per_site,
                    seed=args.seed, **options)
    _print_run(run)
    return EXIT_OK


# ------------------------------------------------------------------------------------ importance
@subcommand
def add_importance_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "importance", help="importance sampling of critical faults (PE sensitivity) versus uniform sampling",
        description="Estimate the share of critical single faults (accuracy drop above --critical-drop) by drawing "
                    "--draws faults with probability proportional to PE sensitivity (one backward pass, sum of "
                    "|v dL/dv| over the values v the faulty register holds) times a bit weighting, mixed with uniform "
                    "sampling, and --draws faults uniformly; injects the distinct ones and writes DIR/importance.json "
                    "(precision of both samplers, self-normalised estimates with confidence intervals).",
        epilog="Example: sysarray importance --model model.pt --register psum --value 1 --draws 100 -o imp/",
    )
    _add_task_arguments(p)
    _add_site_arguments(p)
    p.add_argument("--draws", type=int_at_least(2), default=100, metavar="N", help="draws per sampler, at least 2 "
                                                                                   "(default 100)")
    add_deprecated_alias(p, "--budget", "draws", "--draws N", type=int_at_least(2), metavar="N")
    p.add_argument("--uniform-mix", type=float_within(0.0, 1.0, lo_open=True), default=0.1, metavar="FRACTION",
                   help="share of uniform sampling in the mixture, in (0, 1]: every fault keeps a chance to be "
                        "drawn, which the estimate needs (default 0.1)")
    p.add_argument("--bit-weighting", choices=("uniform", "linear", "exponential"), default="exponential",
                   help="weight of a bit by significance (default exponential)")
    p.add_argument("--sensitivity", choices=("wgrad", "grad"), default="wgrad",
                   help="PE sensitivity: |v dL/dv| or |dL/dv| of the values v a register holds (default wgrad)")
    p.add_argument("--sensitivity-target", choices=("register", "weights"), default="register",
                   help="register: each register by its own values (weights, activations, partial sums); weights: "
                        "every register by the weights mapped to the PE (default register)")
    p.add_argument("--calibration-images", type=positive_int, default=256, metavar="N",
                   help="training images of the backward pass (default 256)")
    add_seed_argument(p, "both samplers' draws")
    _add_run_arguments(p)
    p.set_defaults(func=run_importance_command)


def run_importance_command(args: argparse.Namespace) -> int:
    import os

    from mitigation.importance import run_importance

    registers, bits, values = _sites(args)
    options = _run_options(args, "importance")
    res = run_importance(_task(args), _array(args), args.out, registers, bits, values, budget=args.draws,
                         uniform_mix=args.uniform_mix, bit_weighting=args.bit_weighting, sensitivity=args.sensitivity,
                         calibration_images=args.calibration_images, seed=args.seed,
                         sensitivity_target=args.sensitivity_target, **options)
    for k in ("importance", "uniform"):
        r = res[k]
        print(f"{k:<10} precision {r['precision']:.3f} ({r['critical_draws']}/{r['draws']} draws critical, "
              f"{r['distinct_critical']} distinct); critical fraction {r['estimate']:.4f} "
              f"[{r['estimate_lo']:.4f}, {r['estimate_hi']:.4f}]")
    print(f"wrote {os.path.join(args.out, 'importance.json')}")
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
