"""`sysarray fat` and `sysarray efat` (registered with `sysarray.cli.subcommand`): parsing only,
the work is :mod:`mitigation.fat` and :mod:`mitigation.efat`."""
from __future__ import annotations

import argparse

from sysarray.cli import EXIT_OK, subcommand


def _add_array_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--array", default="16x16", metavar="RxC", help="array rows x columns (default 16x16)")
    p.add_argument("--dataflow", choices=("ws", "os", "is"), default="ws", help="default ws")
    p.add_argument("--psum-bits", type=int, default=32, help="partial-sum register width, 17..32 (default 32)")


def _array_config(args: argparse.Namespace, bypass: bool):
    from sysarray.config import ArrayConfig, parse_array

    rows, cols = parse_array(args.array)
    return ArrayConfig(rows, cols, args.dataflow, psum_bits=args.psum_bits, bypass=bypass)


def _add_training_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--optimizer", choices=("sgd", "adam"),
                   help="default: sgd (momentum 0.9) for fapt, adam for stuckat and random")
    p.add_argument("--lr", type=float, help="learning rate, cosine to 0 (default: 0.02 sgd, 1e-3 adam)")
    p.add_argument("--batch-size", type=int, default=64, help="mini-batch size (default 64)")
    p.add_argument("--dataset", help="dataset (default: the checkpoint's)")
    p.add_argument("--data-dir", help="directory of the dataset files")
    p.add_argument("--limit", type=int, help="judge accuracy on the first N test images only")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


@subcommand
def add_fat_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "fat", help="fault-aware training of a model for one chip (FAP, FAP+T, stuck-at FAT, random FAT)",
        description="Adapt a trained checkpoint to one faulty chip and save it as a normal checkpoint that "
                    "`sysarray run` evaluates unchanged. fap: prune the weights mapped to faulty PEs (bypass "
                    "hardware, no training); fapt: prune and retrain with the mask fixed; stuckat: retrain with the "
                    "chip's exact stuck-at forward pass and straight-through gradients; random: chip-agnostic "
                    "training with random errors after every layer. Prints the accuracy on the chip before and after, "
                    "the epochs and the seconds spent. fap and fapt are judged on the bypass chip (WS only).",
        epilog="Example: sysarray fat --model model.pt --chip chip.npz --method fapt --epochs 10 -o chip_model.pt",
    )
    p.add_argument("--model", required=True, metavar="MODEL.pt", help="checkpoint written by `sysarray train` or `sysarray import-model`")
    p.add_argument("--chip", required=True, metavar="CHIP.npz", help="the chip's fault-map file")
    p.add_argument("--method", required=True, choices=("fap", "fapt", "stuckat", "random"), help="the method")
    p.add_argument("--epochs", type=float, default=10.0, help="retraining epochs, fractions allowed (default 10)")
    _add_array_arguments(p)
    p.add_argument("--bypass", action="store_true",
                   help="the chip bypasses faulty PEs (implied by fap and fapt; with stuckat the forward uses bypass)")
    p.add_argument("--p", type=float, default=0.01, help="error probability of random FAT (default 0.01)")
    _add_training_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffling and random errors (default 0)")
    p.add_argument("--json", metavar="OUT.json", help="also write the report as JSON")
    p.add_argument("-o", "--out", required=True, metavar="CHIP_MODEL.pt", help="checkpoint to write")
    p.set_defaults(func=run_fat)


def run_fat(args: argparse.Namespace) -> int:
    from accel_models.evaluation import prepare
    from mitigation.fat import fault_aware_train, save_fat_checkpoint
    from sysarray.cliargs import write_json
    from sysarray.faults import FaultMap

    cfg = _array_config(args, args.bypass)
    faults = FaultMap.load(args.chip)
    task = prepare(args.model, args.dataset, args.data_dir, args.limit)
    model, rep = fault_aware_train(task, cfg, faults, args.method, args.epochs, optimizer=args.optimizer, lr=args.lr,
                                   batch_size=args.batch_size, seed=args.seed, p=args.p, progress=not args.quiet)
    record = dict(rep.to_dict(), chip=args.chip, source_model=args.model, seed=args.seed)
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
        epilog="Example: sysarray efat --model model.pt --chips chips/ --max-drop 0.02 --bypass -o efat/",
    )
    p.add_argument("--model", required=True, metavar="MODEL.pt", help="checkpoint written by `sysarray train` or `sysarray import-model`")
    p.add_argument("--chips", required=True, metavar="DIR", help="directory of fault-map files (*.npz), one per chip")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--max-drop", type=float, help="largest accuracy drop against the fault-free chip, a fraction")
    g.add_argument("--min-accuracy", type=float, help="smallest accuracy on the chip, a fraction")
    _add_array_arguments(p)
    p.add_argument("--bypass", action="store_true", help="bypass hardware (FAP+T, exact union fusion); "
                   "without it: stuck-at FAT with multi-map training per group")
    p.add_argument("--rates", help="fault-rate grid, e.g. 0,0.05,0.1 (default: steps of 0.05 up to two steps "
                   "above the population's highest rate)")
    p.add_argument("--amounts", default="0,1,2,4,8", help="retraining-amount grid in epochs (default 0,1,2,4,8)")
    p.add_argument("--maps-per-rate", type=int, default=3, help="S random maps per rate (default 3)")
    p.add_argument("--aggregate", default="min", help="min (default) or a quantile such as q0.1")
    p.add_argument("--grouping", default="greedy", help="greedy (default), jaccard, fixed or fixed:K")
    p.add_argument("--conventional-epochs", type=float,
                   help="the fixed amount of conventional FAT per chip (default: the largest grid amount)")
    p.add_argument("--map-faults", choices=("uniform", "clustered"), default="uniform",
                   help="placement of the faulty PEs of the map's random maps (default uniform)")
    p.add_argument("--register", default="psum", help="registers of the stuck-at map's random faults (default psum)")
    p.add_argument("--bits", help="bits of the stuck-at map's random faults (default all)")
    p.add_argument("--value", default="random", help="stuck value of the map's random faults: 0, 1, random")
    _add_training_arguments(p)
    p.add_argument("--train-limit", type=int, help="retrain on the first N training images only")
    p.add_argument("--seed", type=int, default=0, help="seed of the map's fault maps and the retrainings (default 0)")
    p.add_argument("-o", "--out", required=True, metavar="OUTDIR", help="output directory (resumable)")
    p.set_defaults(func=run_efat)


def run_efat(args: argparse.Namespace) -> int:
    from mitigation.efat import EfatSettings, run_efat as run
    from sysarray.cliargs import parse_bits, parse_registers, parse_values

    settings = EfatSettings(
        max_drop=args.max_drop, min_accuracy=args.min_accuracy, bypass=args.bypass,
        rates=None if args.rates is None else _floats(args.rates, "--rates"),
        amounts=_floats(args.amounts, "--amounts"), maps_per_rate=args.maps_per_rate, aggregate=args.aggregate,
        grouping=args.grouping, conventional_epochs=args.conventional_epochs, map_faults=args.map_faults,
        registers=parse_registers(args.register), bits=parse_bits(args.bits) if args.bits else None,
        values=parse_values(args.value), optimizer=args.optimizer, lr=args.lr, batch_size=args.batch_size,
        limit=args.limit, train_limit=args.train_limit, seed=args.seed,
    )
    result = run(args.model, args.chips, _array_config(args, args.bypass), settings, args.out,
                 dataset=args.dataset, data_dir=args.data_dir, progress=not args.quiet)
    print(result.table())
    print(f"wrote {args.out}/cost.json, cost.md, groups.json, resilience.csv, resilience.png and {len(result.groups)} group model(s)")
    return EXIT_OK


def _floats(text: str, flag: str) -> list[float]:
    try:
        return [float(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"{flag} must be a comma-separated list of numbers, e.g. 0,0.05,0.1. Got {text!r} instead.") from None
