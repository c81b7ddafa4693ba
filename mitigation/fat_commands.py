"""`sysarray fat` and `sysarray efat` (registered with `sysarray.cli.subcommand`): parsing only,
the work is :mod:`mitigation.fat` and :mod:`mitigation.efat`."""
from __future__ import annotations

import argparse

from sysarray.cli import EXIT_OK, subcommand
from sysarray.cliargs import (
    add_array_arguments, add_data_arguments, add_deprecated_alias, add_device_argument, add_faults_dir_argument,
    add_faults_file_argument, add_json_argument, add_limit_argument, add_model_argument, add_out_argument,
    add_quiet_argument, add_random_fault_arguments, add_seed_argument, int_at_least, non_negative_float, number_list,
    positive_float, positive_int, probability,
)


def _add_training_arguments(p: argparse.ArgumentParser, limit_minimum: int = 1) -> None:
    g = p.add_argument_group("training and data")
    g.add_argument("--optimizer", choices=("sgd", "adam"),
                   help="optimizer (default: sgd with momentum 0.9 for fapt, adam for stuckat and random)")
    g.add_argument("--lr", type=positive_float, help="learning rate, cosine to 0 (default: 0.02 sgd, 1e-3 adam)")
    g.add_argument("--batch-size", type=positive_int, default=64, metavar="N", help="mini-batch size (default 64)")
    add_data_arguments(g, what="dataset to retrain on and test on")
    add_limit_argument(g, limit_minimum)
    add_device_argument(g, cuda="training and the chip's runs on the GPU; the chip's values are the same, the "
                                "trained weights follow the GPU's float arithmetic")
    add_quiet_argument(g)


@subcommand
def add_fat_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "fat", help="fault-aware training of a model for one chip (FAP, FAP+T, stuck-at FAT, random FAT)",
        description="Adapt a trained checkpoint to one faulty chip and save it as a normal checkpoint that "
                    "`sysarray run` evaluates unchanged. fap: prune the weights mapped to faulty PEs (bypass "
                    "hardware, no training); fapt: prune and retrain with the mask fixed; stuckat: retrain with the "
                    "chip's exact stuck-at forward pass and straight-through gradients; random: chip-agnostic "
                    "training with random errors after every layer. Prints the accuracy on the chip before and after, "
                    "the epochs and the seconds spent. fap and fapt are judged on the bypass chip (WS only). The "
                    "array size is the fault-map file's.",
        epilog="Example: sysarray fat --model model.pt --faults chip.npz --method fapt --epochs 10 -o chip_model.pt",
    )
    add_model_argument(p)
    add_faults_file_argument(p, required=True, alias="--chip")
    p.add_argument("--method", required=True, choices=("fap", "fapt", "stuckat", "random"), help="the method (required)")
    p.add_argument("--epochs", type=non_negative_float, default=10.0, metavar="N",
                   help="retraining epochs, fractions allowed (default 10)")
    g = p.add_argument_group("chip")
    add_array_arguments(g, from_file=True,
                        bypass="the chip bypasses faulty PEs (implied by fap and fapt; with stuckat the forward uses "
                               "bypass) (default: faulty PEs compute)")
    p.add_argument("--p", type=probability, default=0.01, help="error probability of random FAT, in [0, 1] (default 0.01)")
    _add_training_arguments(p)
    add_seed_argument(p, "the shuffling and random errors")
    add_json_argument(p, "the report")
    add_out_argument(p, "file", "CHIP_MODEL.pt", "checkpoint to write (required)")
    p.set_defaults(func=run_fat)


def run_fat(args: argparse.Namespace) -> int:
    from accel_models.evaluation import prepare
    from mitigation.fat import fault_aware_train, save_fat_checkpoint
    from sysarray.cliargs import load_chip_file, require, resolve_device, write_json

    chip = require(args, "faults", "--faults CHIP.npz")
    device = resolve_device(args, "fat")
    cfg, faults = load_chip_file(args)
    task = prepare(args.model, args.dataset, args.data_dir, args.limit)
    model, rep = fault_aware_train(task, cfg, faults, args.method, args.epochs, optimizer=args.optimizer, lr=args.lr,
                                   batch_size=args.batch_size, seed=args.seed, p=args.p, progress=not args.quiet,
                                   device=device)
    record = dict(rep.to_dict(), chip=chip, source_model=args.model, seed=args.seed, device=args.device)
    save_fat_checkpoint(args.out, model, task, record)
    mode = "bypass" if rep.eval_cfg["bypass"] else "stuck-at"
    print(f"{task.dataset.name}: {len(task.images)} test images on a {cfg.replace(bypass=rep.eval_cfg['bypass'])} "
          f"array, chip {faults.summary()}")
    print(f"{args.method}: accuracy on the chip ({mode}) {rep.accuracy_before:.4f} before -> {rep.accuracy_after:.4f} "
          f"after (fault-free chip {rep.clean_accuracy:.4f}); {rep.epochs:g} epochs, {rep.seconds:.1f} s; wrote {args.out}")
    if args.json:
        write_json(args.json, record)
    return EXIT_OK


@subcommand
def add_efat_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "efat", help="eFAT: resilience map, chip grouping and one retraining per group for a chip population",
        description="Build a resilience map (accuracy after FAP+T, or stuck-at FAT, over a fault-rate grid and a "
                    "retraining-amount grid, the minimum over S random maps per rate), give every chip the least "
                    "retraining that meets the accuracy constraint, group chips whose fused (OR) fault map saves "
                    "retraining, retrain once per group, and validate every member chip on its own map. Writes "
                    "OUTDIR/resilience.csv and .png, groups.json, groups/*.pt, cost.json and cost.md. An interrupted "
                    "run continues where it stopped when started again with the same arguments.",
        epilog="Example: sysarray efat --model model.pt --faults-dir chips/ --max-drop 0.02 --bypass -o efat/",
    )
    add_model_argument(p)
    add_faults_dir_argument(p, required=True, alias="--chips")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--max-drop", type=probability, metavar="FRACTION",
                   help="largest accuracy drop against the fault-free chip, in [0, 1] (this or --min-accuracy required)")
    g.add_argument("--min-accuracy", type=probability, metavar="FRACTION",
                   help="smallest accuracy on the chip, in [0, 1] (this or --max-drop required)")
    c = p.add_argument_group("chip")
    add_array_arguments(c, bypass="bypass hardware (FAP+T, exact union fusion); without it: stuck-at FAT with "
                                  "multi-map training per group (default: stuck-at)")
    r = add_random_fault_arguments(
        p, rate="list", models=("pe_rate", "clustered"), extras=False, title="resilience map's random maps",
        rates_help="fault-rate grid (faulty PEs / all PEs), comma-separated, each in [0, 1] (default: steps of 0.05 up "
                   "to two steps above the population's highest rate)")
    add_deprecated_alias(r, "--map-faults", "fault_model", "--fault-model pe_rate|clustered",
                         choices=("uniform", "clustered"), convert=lambda v: "pe_rate" if v == "uniform" else v)
    r.add_argument("--maps-per-rate", type=positive_int, default=3, metavar="S", help="S random maps per rate (default 3)")
    r.add_argument("--amounts", type=number_list(0.0, example="0,1,2,4,8"), default="0,1,2,4,8", metavar="LIST",
                   help="retraining-amount grid in epochs (default 0,1,2,4,8)")
    r.add_argument("--aggregate", default="min", help="min or a quantile such as q0.1 (default min)")
    p.add_argument("--grouping", default="greedy", help="greedy, jaccard, fixed or fixed:K (default greedy)")
    p.add_argument("--conventional-epochs", type=non_negative_float, metavar="N",
                   help="the fixed amount of conventional FAT per chip (default: the largest grid amount)")
    _add_training_arguments(p, limit_minimum=2)
    p.add_argument("--train-limit", type=int_at_least(2), metavar="N",
                   help="retrain on the first N training images only (default: all)")
    add_seed_argument(p, "the map's fault maps and the retrainings")
    add_out_argument(p, "dir", "OUTDIR", "output directory, created if missing; rerunning resumes it (required)")
    p.set_defaults(func=run_efat)


def run_efat(args: argparse.Namespace) -> int:
    import os

    from mitigation.efat import EfatSettings, run_efat as run
    from sysarray.cliargs import (
        array_config, check_rates_place_faults, fault_choices, fault_model_of, require, resolve_device,
    )

    chips = require(args, "faults_dir", "--faults-dir DIR")
    device = resolve_device(args, "efat")
    cfg = array_config(args)
    model = fault_model_of(args)
    if args.rates is not None:
        check_rates_place_faults(args.rates, model, True, cfg.rows, cfg.cols, cfg.psum_bits, "--rates")
    registers, bits, values = fault_choices(args)
    settings = EfatSettings(
        max_drop=args.max_drop, min_accuracy=args.min_accuracy, bypass=args.bypass, rates=args.rates,
        amounts=args.amounts, maps_per_rate=args.maps_per_rate, aggregate=args.aggregate,
        grouping=args.grouping, conventional_epochs=args.conventional_epochs,
        map_faults="uniform" if model == "pe_rate" else model, registers=registers, bits=bits, values=values,
        optimizer=args.optimizer, lr=args.lr, batch_size=args.batch_size, limit=args.limit,
        train_limit=args.train_limit, seed=args.seed,
    )
    result = run(args.model, chips, cfg, settings, args.out, dataset=args.dataset, data_dir=args.data_dir,
                 progress=not args.quiet, device=device)
    print(result.table())
    files = ", ".join(os.path.join(args.out, f) for f in ("cost.json", "cost.md", "groups.json", "resilience.csv",
                                                           "resilience.png"))
    print(f"wrote {files} and {len(result.groups)} group model(s) in {os.path.join(args.out, 'groups')}")
    return EXIT_OK
