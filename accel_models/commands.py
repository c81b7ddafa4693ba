"""``sysarray train``, ``sysarray import-model`` and ``sysarray run``: argument parsing only; the work is library calls."""
from __future__ import annotations

import argparse

from sysarray.cli import EXIT_OK, subcommand
from sysarray.cliargs import (
    add_chip_arguments, add_data_arguments, add_deprecated_alias, add_device_argument, add_json_argument,
    add_limit_argument, add_model_argument, add_out_argument, add_quiet_argument, add_seed_argument,
    non_negative_int, positive_float, positive_int,
)

ZOO = "mlp, lenet5, vgg11, alexnet, resnet20, mobilenetv2, mobilenetv3, vit"


def _add_optimizer_arguments(p: argparse.ArgumentParser) -> None:
    """--batch-size, --optimizer and --lr of the trainer (accel_models.train.train)."""
    p.add_argument("--batch-size", type=positive_int, default=64, metavar="N", help="mini-batch size (default 64)")
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam", help="optimizer (default adam)")
    p.add_argument("--lr", type=positive_float, help="learning rate, cosine schedule to 0 (default: 3e-3 adam, 0.05 sgd)")


@subcommand
def add_train_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a zoo model on a dataset and save a self-describing checkpoint",
        description="Train a model of the zoo on an offline dataset with a fixed seed and save a checkpoint "
                    "that `sysarray run` loads with nothing else.",
        epilog="Example: sysarray train --arch lenet5 --dataset digits --epochs 30 --seed 0 -o model.pt",
    )
    p.add_argument("--arch", metavar="NAME", help=f"zoo architecture: {ZOO} (required)")
    add_deprecated_alias(p, "--model", "arch", "--arch NAME (--model always names a checkpoint file)", metavar="NAME")
    p.add_argument("--dataset", default="digits", help="digits, mnist, fashion-mnist, cifar10, or a path to your own "
                                                       "data: an .npz file or an image folder (docs/own-models.md) "
                                                       "(default digits)")
    p.add_argument("--data-dir", metavar="DIR",
                   help="directory of a named dataset's files (mnist, fashion-mnist, cifar10; default: the dataset's "
                        "standard location)")
    p.add_argument("--epochs", type=positive_int, default=30, metavar="N", help="training epochs (default 30)")
    _add_optimizer_arguments(p)
    p.add_argument("--augment", choices=("none", "crop", "flip", "crop+flip"), default="none",
                   help="data augmentation (default none)")
    add_seed_argument(p, "the weights, shuffling and augmentation")
    add_device_argument(p)
    add_quiet_argument(p)
    add_out_argument(p, "file", "MODEL.pt", "checkpoint to write (required)")
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from accel_models.checkpoint import save_checkpoint
    from accel_models.data import load_dataset
    from accel_models.evaluation import calibration_settings
    from accel_models.train import train_zoo_model
    from sysarray.cliargs import require, resolve_device

    arch = require(args, "arch", "--arch NAME")
    device = resolve_device(args, "train")
    data = load_dataset(args.dataset, args.data_dir)
    model, history = train_zoo_model(
        arch, data, args.epochs, args.seed, batch_size=args.batch_size, optimizer=args.optimizer,
        lr=args.lr, augment=None if args.augment == "none" else args.augment, progress=not args.quiet, device=device,
    )
    save_checkpoint(args.out, model.cpu(), dataset=data, preprocessing=data.preprocessing, history=history,
                    extra={"calibration": calibration_settings()})
    print(f"{arch} on {data.name}: float test accuracy {history['test_accuracy']:.4f} "
          f"after {args.epochs} epochs ({history['train_time_s']:.1f} s); wrote {args.out}")
    return EXIT_OK


@subcommand
def add_import_model_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "import-model", help="make a checkpoint of your own torch model (a factory) that every command accepts",
        description="Build your own model by calling a factory (a function or nn.Module class in a module or a .py "
                    "file) with JSON keyword arguments, load its weights from a state-dict file and/or train it with "
                    "the seeded trainer, check that it gives one logit per class and lowers to an int8 program, "
                    "record its float test accuracy, and write a checkpoint that run, campaign, sweep, importance, "
                    "clip, fat and efat load like a zoo model's. Loading that checkpoint imports and runs the "
                    "factory's code: share it only with people who trust that code (docs/own-models.md).",
        epilog="Examples: sysarray import-model --factory net.py:build --kwargs '{\"width\": 16}' --dataset data.npz "
               "--train-epochs 10 -o model.pt; sysarray import-model --factory mypkg.models:Net --weights net.pt "
               "--dataset images/ -o model.pt",
    )
    p.add_argument("--factory", required=True, metavar="FILE_OR_MODULE:CALLABLE",
                   help="path/to/file.py:callable or package.module:callable; called as callable(**kwargs)")
    p.add_argument("--kwargs", default="{}", metavar="JSON", help="keyword arguments of the factory, a JSON object "
                                                                  "(default {})")
    p.add_argument("--weights", metavar="STATE_DICT.pt",
                   help="weights saved with torch.save(model.state_dict()) (default: the factory's initial weights)")
    p.add_argument("--dataset", required=True, help="a dataset name (digits, mnist, fashion-mnist, cifar10) or a path "
                                                    "to your own data: an .npz file or an image folder (required)")
    p.add_argument("--data-dir", metavar="DIR",
                   help="directory of a named dataset's files (mnist, fashion-mnist, cifar10; default: the dataset's "
                        "standard location)")
    p.add_argument("--train-epochs", type=non_negative_int, default=0, metavar="N",
                   help="train N epochs (after loading --weights, if given); 0: weights only (default 0)")
    _add_optimizer_arguments(p)
    add_seed_argument(p, "the initial weights and the training")
    add_device_argument(p)
    add_quiet_argument(p)
    add_out_argument(p, "file", "MODEL.pt", "checkpoint to write (required)")
    p.set_defaults(func=run_import_model)


def run_import_model(args: argparse.Namespace) -> int:
    import json

    from accel_models.own_model import import_model
    from sysarray.cliargs import resolve_device

    device = resolve_device(args, "import-model")
    try:
        kwargs = json.loads(args.kwargs)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--kwargs must be a JSON object, e.g. '{{\"width\": 16}}'. Got {args.kwargs!r} instead "
                         f"({exc.msg} at character {exc.pos}).") from None
    if not isinstance(kwargs, dict):
        raise ValueError(f"--kwargs must be a JSON object, e.g. '{{\"width\": 16}}'. Got {args.kwargs!r} instead.")
    res = import_model(args.out, args.factory, args.dataset, kwargs=kwargs, weights=args.weights,
                       train_epochs=args.train_epochs, seed=args.seed, data_dir=args.data_dir, progress=not args.quiet,
                       **({"batch_size": args.batch_size, "optimizer": args.optimizer, "lr": args.lr}
                          if args.train_epochs else {}), **({"device": device} if device and args.train_epochs else {}))
    how = ", ".join(filter(None, ["weights from " + args.weights if args.weights else "",
                                  f"trained {args.train_epochs} epochs" if args.train_epochs else ""]))
    print(f"{res.model.arch['factory']} on {res.dataset.name}: float test accuracy {res.test_accuracy:.4f} ({how}); "
          f"{res.chip_layers} chip layers; wrote {res.path}")
    return EXIT_OK


@subcommand
def add_run_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "run", help="run a trained model on one (faulty) chip: accuracy, cycles, utilization",
        description="Lower a checkpoint to an int8 integer program, run the dataset's test split on a simulated "
                    "systolic array with the given stuck-at faults, and report accuracy (next to the fault-free "
                    "accuracy when faults are given), total cycles and utilization.",
        epilog="Examples: sysarray run --model model.pt --array 16x16 --dataflow ws; "
               "sysarray run --model model.pt --rate 0.02 --register psum --bits 24-31 --value 1 --seed 0 --bypass; "
               "sysarray run --model model.pt --faults chip.npz",
    )
    add_model_argument(p)
    add_data_arguments(p)
    add_limit_argument(p)
    add_chip_arguments(p)
    add_seed_argument(p, "the random map: chip 0 of `sysarray faults generate` with the same options")
    add_device_argument(p)
    add_json_argument(p)
    p.set_defaults(func=run_run)


def run_run(args: argparse.Namespace) -> int:
    from accel_models.evaluation import prepare
    from sysarray.cliargs import chip_from_args, resolve_device, write_json

    device = resolve_device(args, "run")
    cfg, faults = chip_from_args(args)  # bad chip options fail before the model is loaded
    task = prepare(args.model, args.dataset, args.data_dir, args.limit)
    out = _run_on_chip(task, cfg, faults, args.engine, device)
    out.update(model=args.model, dataset=task.dataset.name, array=cfg.to_dict(), engine=args.engine,
               device=args.device, float_accuracy=task.float_accuracy)
    print(f"{task.dataset.name}: {out['images']} test images on a {cfg} array ({args.engine} engine, {args.device})")
    if faults is not None and not faults.is_empty:
        print(f"chip: {faults.summary()}")
        print(f"accuracy {out['accuracy']:.4f} (fault-free {out['clean_accuracy']:.4f}, float {out['float_accuracy']:.4f}); "
              f"top-1 changed on {out['sdc_rate']:.2%} of images")
    else:
        print(f"accuracy {out['accuracy']:.4f} (float model {out['float_accuracy']:.4f})")
    print(f"cycles {out['cycles']:,}  overall utilization {out['overall_util']:.2f}%  ({out['seconds']:.2f} s)")
    if args.json:
        write_json(args.json, out)
        print(f"wrote {args.json}")
    return EXIT_OK


def _run_on_chip(task, cfg, faults, engine: str, device: str | None) -> dict:
    """:func:`accel_models.evaluation.run_on_chip`, with the runs on ``device`` (None: the CPU)."""
    if device is None:
        from accel_models.evaluation import run_on_chip

        return run_on_chip(task, cfg, faults, engine=engine)
    import time

    from accel_models.evaluation import chip_summary

    t0 = time.perf_counter()
    res = task.program.run(task.images, cfg, faults=faults, engine=engine, device=device)
    out = chip_summary(res, task.labels, cfg.rows * cfg.cols)
    out["seconds"] = time.perf_counter() - t0
    out["images"] = int(len(task.images))
    if faults is not None and not faults.is_empty:
        clean = task.program.run(task.images, cfg.replace(bypass=False), faults=None, engine="fast", device=device)
        out["clean_accuracy"] = clean.accuracy(task.labels)
        out["sdc_rate"] = float((clean.predictions.cpu() != res.predictions.cpu()).double().mean())
        out["faulty_pes"] = faults.n_faulty_pes
        out["stuck_bits"] = len(faults)
    return out
