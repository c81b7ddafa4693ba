"""`sysarray clip`: harden a checkpoint with clipped activations (registered with `sysarray.cli.subcommand`).

Argument parsing only; the work is :func:`mitigation.clipping.clip_checkpoint`.
"""
from __future__ import annotations

import argparse
import inspect

from sysarray.cli import EXIT_OK, subcommand
from sysarray.cliargs import parse_bits, parse_registers, parse_values, write_json

METHODS = ("ranger", "ftclipact", "fitact", "proact")


@subcommand
def add_clip_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "clip", help="harden a model with clipped activations (Ranger, FT-ClipAct, FitAct, ProAct)",
        description="Find activation thresholds for a trained checkpoint and save a clipped checkpoint that "
                    "`sysarray run` and `sysarray campaign` load unchanged. ranger: profiled maxima; ftclipact: "
                    "layer-wise interval search scored by fault injection; fitact: trained neuron-wise thresholds; "
                    "proact: hybrid thresholds trained layer by layer from the last. Prints the threshold count, "
                    "the share of the model's parameters it adds, and the search/training time.",
        epilog="Examples: sysarray clip --method ranger --model model.pt -o ranger.pt; "
               "sysarray clip --method ftclipact --model model.pt --site chip --dataflow os --rates 0.01,0.02 "
               "--bits 24-30 --value 1 -o ft.pt; sysarray clip --method ftclipact --model model.pt --weight-format float32 "
               "-o ft32.pt; sysarray clip --model other.pt --thresholds ranger.pt -o same.pt",
    )
    p.add_argument("--method", choices=METHODS, help="threshold method (required unless --thresholds is given)")
    p.add_argument("--model", required=True, metavar="MODEL.pt", help="checkpoint written by `sysarray train` or `sysarray import-model`")
    p.add_argument("--dataset", help="dataset (default: the checkpoint's); only its training split is used")
    p.add_argument("--data-dir", help="directory of the dataset files")
    p.add_argument("-o", "--out", required=True, metavar="CLIPPED.pt", help="clipped checkpoint to write")
    p.add_argument("--thresholds", metavar="FILE", help="take the thresholds from a clipped checkpoint or spec file "
                                                        "instead of searching (same architecture only)")
    p.add_argument("--policy", choices=("zero", "clamp"), help="above the threshold: zero (default) or clamp")
    p.add_argument("--granularity", choices=("layer", "channel", "neuron", "hybrid"),
                   help="ranger (default layer), fitact (default neuron), proact (default hybrid)")
    p.add_argument("--calibration-images", type=int, help="ranger: profiling images (1024); ftclipact: scoring images (256)")
    p.add_argument("--epochs", type=int, help="fitact (10), proact (3 per weight-decay setting)")
    p.add_argument("--lr", type=float, help="Adam learning rate: fitact 1e-3, proact 1e-2")
    p.add_argument("--tolerance", type=float, help="ftclipact: score tolerance (0.2 points); proact: accuracy tolerance (0.2 points)")
    p.add_argument("--clean-drop", type=float, metavar="POINTS",
                   help="ftclipact: skip candidate thresholds whose fault-free float accuracy on the profiling images "
                        "(1,024 training images) is more than POINTS below the unclipped model's (default 0.5; inf: "
                        "no guard)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fault draws, shuffling and validation split (default 0)")
    g = p.add_argument_group("ftclipact fault injection")
    g.add_argument("--site", choices=("memory", "chip"), default="memory",
                   help="memory: bit errors in stored weights/thresholds (default); chip: PE faults")
    g.add_argument("--rates", help="fault-rate grid: bit error rates (memory, default 1e-7,1e-6,3e-6,1e-5,3e-5) or "
                                   "PE fault rates (chip, default 0.005,0.01,0.02,0.03,0.05)")
    g.add_argument("--repetitions", type=int, default=5, help="fault draws per rate (default 5)")
    g.add_argument("--mode", choices=("flip", "stuck0", "stuck1", "stuck"), default="flip", help="memory bit errors (default flip)")
    g.add_argument("--weight-format", choices=("int8", "float32"),
                   help="memory site: how the weights are stored: int8 (the chip's weight memory and threshold codes, "
                        "default) or float32 (the float model's IEEE-754 conv/linear weights and thresholds, as the "
                        "clipping papers inject; scored on the float model)")
    g.add_argument("--array", default="16x16", metavar="RxC", help="chip array (default 16x16)")
    g.add_argument("--dataflow", choices=("ws", "os", "is"), default="ws", help="chip dataflow (default ws)")
    g.add_argument("--register", default="psum", help="chip fault registers (default psum)")
    g.add_argument("--bits", default="24-30", help="chip fault bits (default 24-30)")
    g.add_argument("--value", default="1", help="chip stuck value 0, 1 or random (default 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", metavar="OUT.json", help="also write the summary as JSON")
    p.set_defaults(func=run_clip)


def _rates(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(r) for r in text.split(","))
    except ValueError:
        raise ValueError(f"--rates must be numbers separated by commas, e.g. 1e-6,1e-5. Got {text!r} instead.") from None


def method_options(args: argparse.Namespace) -> dict:
    """The options the user set that ``args.method`` takes (an option it does not take is an error)."""
    from mitigation.clipping import CLIP_METHODS, FaultSetting

    given = {k: getattr(args, k) for k in ("policy", "granularity", "calibration_images", "epochs", "lr", "tolerance",
                                         "clean_drop")
             if getattr(args, k) is not None}
    if args.method == "ftclipact":
        kw = dict(site=args.site, repetitions=args.repetitions, seed=args.seed)
        if args.rates:
            kw["rates"] = _rates(args.rates)
        if args.site == "memory":
            kw["mode"] = args.mode
            kw["weight_format"] = args.weight_format or "int8"
        elif args.weight_format is not None:
            raise ValueError(f"--weight-format applies to --site memory only (a chip runs int8). Got --weight-format "
                             f"{args.weight_format} with --site chip.")
        else:
            kw.update(array=args.array, dataflow=args.dataflow, registers=parse_registers(args.register),
                      bits=tuple(parse_bits(args.bits)), values=parse_values(args.value))
            kw.setdefault("rates", FaultSetting.chip().rates)
        given["faults"] = FaultSetting(**kw)
    accepted = inspect.signature(CLIP_METHODS[args.method]).parameters
    bad = [k for k in given if k not in accepted]
    if bad:
        flags = ", ".join("--" + k.replace("_", "-") for k in bad)
        raise ValueError(f"--method {args.method} does not take {flags}.")
    return given


def run_clip(args: argparse.Namespace) -> int:
    from mitigation.clipping import clip_checkpoint

    if args.method is None and args.thresholds is None:
        raise ValueError("Give --method ranger|ftclipact|fitact|proact, or --thresholds FILE to reuse found thresholds.")
    if args.method is not None and args.thresholds is not None:
        raise ValueError("Give either --method (find thresholds) or --thresholds FILE (reuse them), not both.")
    options = method_options(args) if args.method else {}
    result = clip_checkpoint(args.model, args.out, args.method, dataset=args.dataset, data_dir=args.data_dir,
                             thresholds=args.thresholds, seed=args.seed, progress=not args.quiet, **options)
    acc = result.history.get("float_test_accuracy")
    before = result.history.get("unclipped_float_test_accuracy")
    print(f"{result.method}: {result.thresholds:,} thresholds ({result.spec.get('granularity')}, {result.spec['policy']} "
          f"policy) = {result.overhead:.4%} of the model's {result.model_parameters:,} parameters; "
          f"found in {result.seconds:.1f} s")
    print(f"float test accuracy {acc:.4f}" + (f" (unclipped {before:.4f})" if before is not None else "") + f"; wrote {args.out}")
    if args.json:
        write_json(args.json, {"method": result.method, "thresholds": result.thresholds,
                               "model_parameters": result.model_parameters, "overhead": result.overhead,
                               "seconds": result.seconds, "float_test_accuracy": acc,
                               "unclipped_float_test_accuracy": before, "out": args.out,
                               "granularity": result.spec.get("granularity"), "policy": result.spec["policy"]})
    return EXIT_OK
