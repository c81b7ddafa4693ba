"""``sysarray train``, ``sysarray import-model`` and ``sysarray run``: argument parsing only; the work is library calls."""
from __future__ import annotations

import argparse

from sysarray.cli import EXIT_OK, subcommand
from sysarray.cliargs import add_chip_arguments, chip_from_args, write_json


def _add_optimizer_arguments(p: argparse.ArgumentParser) -> None:
    """--batch-size, --optimizer and --lr of the trainer (accel_models.train.train)."""
    p.add_argument("--batch-size", type=int, default=64, help="mini-batch size (default 64)")
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam", help="default adam")
    p.add_argument("--lr", type=float, help="learning rate (default: 3e-3 adam, 0.05 sgd), cosine schedule to 0")


@subcommand
def add_train_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a zoo model on a dataset and save a self-describing checkpoint",
        description="Train a model of the zoo on an offline dataset with a fixed seed and save a checkpoint "
                    "that `sysarray run` loads with nothing else.",
        epilog="Example: sysarray train --model lenet5 --dataset digits --epochs 30 --seed 0 -o model.pt",
    )
    p.add_argument("--model", required=True, help="zoo architecture: mlp, lenet5, vgg11, alexnet, resnet20, mobilenetv2, mobilenetv3, vit")
    p.add_argument("--dataset", default="digits", help="digits (default), mnist, fashion-mnist, cifar10, or a path to "
                                                       "your own data: an .npz file or an image folder (docs/own-models.md)")
    p.add_argument("--data-dir", help="directory of the dataset files (mnist, fashion-mnist, cifar10)")
    p.add_argument("--epochs", type=int, default=30, help="training epochs (default 30)")
    _add_optimizer_arguments(p)
    p.add_argument("--augment", choices=("none", "crop", "flip", "crop+flip"), default="none",
                   help="data augmentation (default none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights, shuffling and augmentation")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("-o", "--out", required=True, metavar="MODEL.pt", help="checkpoint to write")
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from accel_models.checkpoint import save_checkpoint
    from accel_models.data import load_dataset
    from accel_models.evaluation import calibration_settings
    from accel_models.train import train_zoo_model

    data = load_dataset(args.dataset, args.data_dir)
    model, history = train_zoo_model(
        args.model, data, args.epochs, args.seed, batch_size=args.batch_size, optimizer=args.optimizer,
        lr=args.lr, augment=None if args.augment == "none" else args.augment, progress=not args.quiet,
    )
    save_checkpoint(args.out, model, dataset=data, preprocessing=data.preprocessing, history=history,
                    extra={"calibration": calibration_settings()})
    print(f"{args.model} on {data.name}: float test accuracy {history['test_accuracy']:.4f} "
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
    p.add_argument("--weights", metavar="STATE_DICT.pt", help="weights saved with torch.save(model.state_dict())")
    p.add_argument("--dataset", required=True, help="a dataset name (digits, mnist, fashion-mnist, cifar10) or a path "
                                                    "to your own data: an .npz file or an image folder")
    p.add_argument("--data-dir", help="directory of a named dataset's files (mnist, fashion-mnist, cifar10)")
    p.add_argument("--train-epochs", type=int, default=0,
                   help="train this many epochs (after loading --weights, if given); default 0: weights only")
    _add_optimizer_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the initial weights and the training (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("-o", "--out", required=True, metavar="MODEL.pt", help="checkpoint to write")
    p.set_defaults(func=run_import_model)


def run_import_model(args: argparse.Namespace) -> int:
    import json

    from accel_models.own_model import import_model

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
                          if args.train_epochs else {}))
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
               "sysarray run --model model.pt --pe-rate 0.02 --register psum --bits 24-31 --value 1 --seed 0 --bypass",
    )
    p.add_argument("--model", required=True, metavar="MODEL.pt", help="checkpoint written by `sysarray train` or `sysarray import-model`")
    p.add_argument("--dataset", help="dataset to test on, a name or a path (default: the checkpoint's)")
    p.add_argument("--data-dir", help="directory of the dataset files")
    add_chip_arguments(p)
    p.add_argument("--engine", choices=("fast", "cycle"), default="fast",
                   help="fast: exact whole-matrix engine (default); cycle: clock-level reference (slow)")
    p.add_argument("--limit", type=int, help="use only the first N test images")
    p.add_argument("--json", metavar="OUT.json", help="also write the results as JSON")
    p.set_defaults(func=run_run)


def run_run(args: argparse.Namespace) -> int:
    from accel_models.evaluation import prepare, run_on_chip

    task = prepare(args.model, args.dataset, args.data_dir, args.limit)
    cfg, faults = chip_from_args(args)
    out = run_on_chip(task, cfg, faults, engine=args.engine)
    out.update(model=args.model, dataset=task.dataset.name, array=cfg.to_dict(), engine=args.engine,
               float_accuracy=task.float_accuracy)
    print(f"{task.dataset.name}: {out['images']} test images on a {cfg} array ({args.engine} engine)")
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
