"""`sysarray yield`: dies at defect densities through diagnosis and the mitigation flow, and the
yield table (registered with `sysarray.cli.subcommand`; the work is :func:`mitigation.yield_model.run_yield`)."""
from __future__ import annotations

import argparse

from sysarray.cli import EXIT_OK, subcommand
from sysarray.cliargs import (
    add_array_arguments, add_data_arguments, add_device_argument, add_limit_argument, add_model_argument,
    add_out_argument, add_quiet_argument, add_seed_argument, float_within, int_within, non_negative_float,
    non_negative_int, number_list, open_probability, positive_float, positive_int, probability,
)

CPU_ONLY = "its dies are diagnosed, mitigated and evaluated on the CPU, in worker processes or on Dask workers"


def _steps(text: str) -> tuple[str, ...]:
    """An argparse type: ``--steps``, a comma-separated list of flow steps."""
    from mitigation.yield_model import STEPS

    steps = tuple(s.strip() for s in str(text).split(",") if s.strip())
    bad = [s for s in steps if s not in STEPS]
    if not steps or bad or len(set(steps)) != len(steps):
        raise argparse.ArgumentTypeError(f"must be distinct steps among {','.join(STEPS)}, comma-separated; "
                                         f"got {text!r}")
    return steps


def _grouping(text: str) -> str:
    """An argparse type: ``--efat-grouping``, a policy of :mod:`mitigation.grouping`."""
    from mitigation.grouping import get_grouping

    try:
        get_grouping(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).rstrip(".")) from None
    return str(text)


def _mix(text: str) -> str:
    """An argparse type: ``--register-mix`` (checked now, resolved against --psum-bits later)."""
    from mitigation.yield_model import parse_register_mix

    try:
        parse_register_mix(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).rstrip(".")) from None
    return str(text).strip()


@subcommand
def add_yield_parser(subparsers) -> None:
    from mitigation.yield_model import (
        DEFAULT_CALIBRATION, DEFAULT_EPOCHS, DEFAULT_GROUP_EPOCHS, DEFAULT_GROUP_MAX_RATE, DEFAULT_GROUPING,
        DEFAULT_MAX_DROP, STEPS,
    )

    p = subparsers.add_parser(
        "yield", help="from a defect density to the share of dies that meet an accuracy constraint, and the cost",
        description="Draw dies at each defect density (Poisson or Stapper's negative binomial defect count, defective "
                    "PEs uniform on the die), diagnose each from GEMM outputs alone, then apply the mitigations in "
                    f"order of cost ({', '.join(STEPS)}) using the diagnosed map, stopping at the first that meets "
                    "the accuracy constraint on the die; with the efat step, the dies no step shipped are then "
                    "grouped by their diagnosed maps and each group retrained once (efat_groups.json). Writes a "
                    "resumable campaign directory (results.csv: one row "
                    "per die; rerunning the same command resumes) and DIR/yield.json, yield.md, yield.png: the share "
                    "of dies shipped after each step, per density, with the analytic yield and the cost per shipped "
                    "die. See docs/yield.md.",
        epilog="Example: sysarray yield --model model.pt --array 32x32 --spare-rows 2 --spare-cols 2 --bypass "
               "--defect-density 0.001,0.003,0.01 --chips 30 --max-drop 0.01 -o yield/",
    )
    add_model_argument(p)
    add_data_arguments(p)
    add_limit_argument(p)
    c = p.add_argument_group("chip")
    add_array_arguments(c, bypass="the array has bypass hardware: enables the bypass (FAP) and fapt steps "
                                  "(default: no bypass hardware)")
    c.add_argument("--spare-rows", type=non_negative_int, default=0, metavar="N",
                   help="spare rows fabricated beside the --array rows; enables the spares step (default 0)")
    c.add_argument("--spare-cols", type=non_negative_int, default=0, metavar="N",
                   help="spare columns fabricated beside the --array columns (default 0)")
    d = p.add_argument_group("defects")
    d.add_argument("--defect-density", type=number_list(0.0, 1.0, "0.001,0.003,0.01"), required=True, metavar="LIST",
                   help="defect densities D0 in defects per PE (a density per area times the PE area), "
                        "comma-separated, distinct, each in [0, 1]; a die's mean defect count is D0 x its PEs, "
                        "spares included (required)")
    d.add_argument("--defect-model", choices=("poisson", "negbin"), default="poisson",
                   help="defect count per die: poisson, or negbin (Stapper's clustered model: Poisson with a "
                        "Gamma-distributed mean, clustering --alpha) (default poisson)")
    d.add_argument("--alpha", type=positive_float, default=None, metavar="ALPHA",
                   help="clustering parameter of negbin, > 0: small values cluster strongly, large ones approach "
                        "Poisson (default 2 with negbin)")
    d.add_argument("--chips", type=positive_int, default=20, metavar="N", help="dies per density (default 20)")
    d.add_argument("--register-mix", type=_mix, default="area", metavar="MIX",
                   help="which register a defect hits: area (in proportion to the register's bits), or weights "
                        "such as weight=1,act=1,psum=2 (default area)")
    d.add_argument("--value", choices=("0", "1", "random"), default="random",
                   help="stuck value: 0, 1, or random (each stuck bit 0 or 1 with equal probability) (default random)")
    d.add_argument("--faults-per-pe", type=positive_int, default=1, metavar="K",
                   help="stuck bits per defective PE (default 1)")
    f = p.add_argument_group("flow")
    f.add_argument("--steps", type=_steps, default=None, metavar="LIST",
                   help=f"mitigation steps, comma-separated among {','.join(STEPS)}, run in that order of cost; "
                        "efat is a population step after every die's flow "
                        "(default: none,remap,arith, then spares with spares, bypass,fapt with --bypass in ws; "
                        "stuckat and efat only when listed)")
    f.add_argument("--max-drop", type=probability, default=DEFAULT_MAX_DROP, metavar="FRACTION",
                   help="a die ships when its accuracy drop against the fault-free chip is at most this, in [0, 1] "
                        f"(default {DEFAULT_MAX_DROP})")
    f.add_argument("--epochs", type=non_negative_float, default=DEFAULT_EPOCHS, metavar="N",
                   help=f"retraining epochs of fapt and stuckat, fractions allowed (default {DEFAULT_EPOCHS:g})")
    f.add_argument("--efat-epochs", type=non_negative_float, default=None, metavar="N",
                   help="retraining epochs of each efat group, fractions allowed; FAP+T for the fused map with "
                        f"--bypass in ws, else stuck-at FAT (default {DEFAULT_GROUP_EPOCHS:g})")
    f.add_argument("--efat-grouping", type=_grouping, default=None, metavar="POLICY",
                   help=f"how efat groups the dies: greedy, jaccard or fixed[:K] (default {DEFAULT_GROUPING})")
    f.add_argument("--efat-max-rate", type=float_within(0.0, 1.0, lo_open=True), default=None, metavar="FRACTION",
                   help="the largest share of faulty PEs in a group's fused map, in (0, 1]; a die above it alone is "
                        f"not grouped (default {DEFAULT_GROUP_MAX_RATE:g})")
    f.add_argument("--calibration-images", type=positive_int, default=DEFAULT_CALIBRATION, metavar="N",
                   help=f"training images that score the remap (default {DEFAULT_CALIBRATION})")
    f.add_argument("--refinements", type=int_within(0, 1000), default=8, metavar="N",
                   help="at most N adaptive test GEMMs of the diagnosis (default 8)")
    add_seed_argument(p, "the dies (replica j uses SeedSequence(seed, spawn_key=(j,)) at every density), the "
                         "diagnosis and the retraining")
    g = p.add_argument_group("running")
    g.add_argument("--workers", type=positive_int, metavar="N",
                   help="local worker processes; 1: in this process (default: all usable cores)")
    g.add_argument("--scheduler", metavar="ADDRESS",
                   help="run on a Dask distributed cluster: a scheduler address (tcp://host:8786) or 'local'; "
                        "results are identical to the local run (default: local worker processes)")
    g.add_argument("--confidence", type=open_probability, default=0.95,
                   help="confidence level of the intervals in aggregates.csv, in (0, 1) (default 0.95)")
    add_device_argument(g, cpu_only=CPU_ONLY)
    add_quiet_argument(g)
    add_out_argument(p, "dir", "DIR", "yield directory, created if missing; rerunning the same command resumes it "
                                      "(required)")
    p.set_defaults(func=run_yield_command)


def yield_inputs(args: argparse.Namespace):
    """``(task, population, cfg)`` of ``sysarray yield`` options; a ValueError for bad combinations."""
    from mitigation.yield_model import DefectPopulation, FlowSettings, GroupSettings, YieldTask, default_steps
    from sysarray.cliargs import array_config

    cfg = array_config(args).replace(spare_rows=args.spare_rows, spare_cols=args.spare_cols)
    if args.defect_model == "poisson" and args.alpha is not None:
        raise ValueError("--alpha is the clustering of --defect-model negbin; leave it out with poisson.")
    alpha = (2.0 if args.alpha is None else args.alpha) if args.defect_model == "negbin" else None
    values = (0, 1) if args.value == "random" else (int(args.value),)
    population = DefectPopulation(args.defect_density, args.chips, args.seed, model=args.defect_model, alpha=alpha,
                                  registers=args.register_mix, values=values, faults_per_pe=args.faults_per_pe)
    steps = args.steps or default_steps(cfg)
    given = {k: v for k, v in (("grouping", args.efat_grouping), ("epochs", args.efat_epochs),
                               ("max_rate", args.efat_max_rate)) if v is not None}
    if given and "efat" not in steps:
        raise ValueError("--efat-epochs, --efat-grouping and --efat-max-rate configure the efat step; "
                         "add efat to --steps.")
    settings = FlowSettings(steps=steps, max_drop=args.max_drop, epochs=args.epochs,
                            calibration_images=args.calibration_images, seed=args.seed, refinements=args.refinements,
                            groups=GroupSettings(**given))
    settings.check(cfg)
    population.check(cfg)
    return YieldTask(args.model, args.dataset, args.data_dir, args.limit, settings=settings), population, cfg


def run_yield_command(args: argparse.Namespace) -> int:
    from mitigation.campaign.commands import check_scheduler
    from mitigation.yield_model import run_yield, table_markdown
    from sysarray.cliargs import resolve_device

    resolve_device(args, "yield")
    if args.scheduler is not None and args.scheduler != "local" and args.workers is not None:
        raise ValueError("--workers applies to local runs and --scheduler local; a remote Dask cluster has its own workers.")
    check_scheduler(args.scheduler)
    task, population, cfg = yield_inputs(args)
    print(f"yield: {population.size} dies on a {cfg} array, steps {','.join(task.settings.steps)} -> {args.out}")
    table = run_yield(task, population, args.out, cfg, workers=args.workers, scheduler=args.scheduler,
                      progress=not args.quiet, confidence=args.confidence)
    run = table["run"]
    trained = run.get("efat_groups_trained", 0)
    if run["evaluated"] == 0 and not trained:
        print(f"nothing to do: all {population.size} dies of {args.out} are already done")
    else:
        resumed = f" ({run['already_done']} were already done)" if run["already_done"] else ""
        print(f"evaluated {run['evaluated']} dies in {run['seconds']:.1f} s{resumed}; "
              f"fault-free accuracy {table['clean_accuracy']:.4f}")
    if trained:
        rows = table["rows"]
        total = {k: sum(r[f"efat_{k}"] for r in rows) for k in ("groups", "grouped", "candidates", "epochs", "shipped")}
        print(f"efat: {total['groups']} groups of {total['grouped']} of the {total['candidates']} dies no step "
              f"shipped, {total['epochs']:g} epochs; {total['shipped']} shipped")
    print(table_markdown(table), end="")
    extra = ", efat_groups.json" if "efat" in table["steps"] else ""
    print(f"wrote {args.out}/results.csv{extra}, yield.json, yield.md, yield.png")
    return EXIT_OK
