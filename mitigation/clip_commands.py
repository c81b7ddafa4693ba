"""`sysarray clip`: harden a checkpoint with clipped activations (registered with `sysarray.cli.subcommand`).

Argument parsing only; the work is :func:`mitigation.clipping.clip_checkpoint`.
"""
from __future__ import annotations

import argparse
import inspect

from sysarray.cli import EXIT_OK, subcommand
from sysarray.cliargs import (
    add_array_arguments, add_data_arguments, add_device_argument, add_json_argument, add_model_argument,
    add_out_argument, add_quiet_argument, add_random_fault_arguments, add_seed_argument, float_within,
    non_negative_float, positive_float, positive_int,
)

METHODS = ("ranger", "ftclipact", "fitact", "proact")
CPU_ONLY = "the threshold search and training are computed on the CPU"


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
    add_model_argument(p)
    add_data_arguments(p, what="dataset whose training split the thresholds are found on")
    add_out_argument(p, "file", "CLIPPED.pt", "clipped checkpoint to write (required)")
    p.add_argument("--thresholds", metavar="FILE", help="take the thresholds from a clipped checkpoint or spec file "
                                                        "instead of searching, same architecture only (default: search)")
    p.add_argument("--policy", choices=("zero", "clamp"), help="above the threshold: zero or clamp (default zero)")
    p.add_argument("--granularity", choices=("layer", "channel", "neuron", "hybrid"),
                   help="thresholds per layer, channel or neuron (default: ranger layer, fitact neuron, proact hybrid)")
    p.add_argument("--calibration-images", type=positive_int, metavar="N",
                   help="ranger: profiling images; ftclipact: scoring images (default: ranger 1024, ftclipact 256)")
    p.add_argument("--epochs", type=positive_int, metavar="N",
                   help="training epochs (default: fitact at most 100, early-stopped; proact 100 per weight decay, "
                        "after 5 warm-up epochs)")
    p.add_argument("--lr", type=positive_float, help="Adam learning rate (default: fitact 1e-3, proact 1e-2 for layer-wise thresholds)")
    p.add_argument("--tolerance", type=non_negative_float, metavar="POINTS",
                   help="ftclipact: score tolerance; proact: accuracy tolerance (default 0.2 points)")
    p.add_argument("--clean-drop", type=float_within(0.0, allow_inf=True, what="a non-negative number or inf"),
                   metavar="POINTS",
                   help="ftclipact: skip candidate thresholds whose fault-free float accuracy on the profiling images "
                        "(1,024 training images) is more than POINTS below the unclipped model's; inf: no guard "
                        "(default 0.5)")
    add_seed_argument(p, "the fault draws, shuffling and validation split")
    add_device_argument(p, cpu_only=CPU_ONLY)
    add_quiet_argument(p)
    add_json_argument(p, "the summary")
    g = add_random_fault_arguments(
        p, rate="list", models=("pe_rate",), extras=False, bits_default="24-30", title="ftclipact fault injection",
        rates_help="fault-rate grid, comma-separated, each in [0, 1]: with --site memory the bit error rates of the "
                   "stored weights and thresholds (default 1e-7,1e-6,3e-6,1e-5,3e-5); with --site chip PE fault "
                   "rates, faulty PEs / all PEs (default 0.005,0.01,0.02,0.03,0.05)")
    g.add_argument("--site", choices=("memory", "chip"), default="memory",
                   help="memory: bit errors in stored weights/thresholds; chip: stuck-at PE faults from --register, "
                        "--bits and --value on the --array chip (default memory)")
    g.add_argument("--repetitions", type=positive_int, default=5, metavar="N", help="fault draws per rate (default 5)")
    g.add_argument("--mode", choices=("flip", "stuck0", "stuck1", "stuck"), default="flip",
                   help="memory site: bit flips or stuck bits (default flip)")
    g.add_argument("--weight-format", choices=("int8", "float32"),
                   help="memory site: how the weights are stored: int8 (the chip's weight memory and threshold codes) "
                        "or float32 (the float model's IEEE-754 conv/linear weights and thresholds, as the clipping "
                        "papers inject; scored on the float model) (default int8)")
    add_array_arguments(g)
    p.set_defaults(func=run_clip)


def method_options(args: argparse.Namespace) -> dict:
    """The options the user set that ``args.method`` takes (an option it does not take is an error)."""
    from mitigation.clipping import CLIP_METHODS, FaultSetting
    from sysarray.cliargs import array_config, check_rates_place_faults, fault_choices

    given = {k: getattr(args, k) for k in ("policy", "granularity", "calibration_images", "epochs", "lr", "tolerance",
                                         "clean_drop")
             if getattr(args, k) is not None}
    if args.method == "ftclipact":
        kw = dict(site=args.site, repetitions=args.repetitions, seed=args.seed)
        if args.rates:
            kw["rates"] = tuple(sorted(args.rates))
        if args.site == "memory":
            kw["mode"] = args.mode
            kw["weight_format"] = args.weight_format or "int8"
        elif args.weight_format is not None:
            raise ValueError(f"--weight-format applies to --site memory only (a chip runs int8). Got --weight-format "
                             f"{args.weight_format} with --site chip.")
        else:
            cfg = array_config(args)
            registers, bits, values = fault_choices(args)
            kw.update(array=args.array, dataflow=args.dataflow, psum_bits=args.psum_bits, registers=registers,
                      bits=None if bits is None else tuple(bits), values=values)
            kw.setdefault("rates", FaultSetting.chip().rates)
            check_rates_place_faults(kw["rates"], "pe_rate", True, cfg.rows, cfg.cols, cfg.psum_bits, "--rates")
        given["faults"] = FaultSetting(**kw)
    accepted = inspect.signature(CLIP_METHODS[args.method]).parameters
    bad = [k for k in given if k not in accepted]
    if bad:
        flags = ", ".join("--" + k.replace("_", "-") for k in bad)
        raise ValueError(f"--method {args.method} does not take {flags}.")
    return given


def run_clip(args: argparse.Namespace) -> int:
    from mitigation.clipping import clip_checkpoint
    from sysarray.cliargs import resolve_device, write_json

    resolve_device(args, "clip")
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
