"""``sysarray faults generate`` and ``sysarray faults show`` (registered with ``sysarray.cli.subcommand``).

``generate`` writes a chip population as fault-map files ``DIR/chip-0000.npz`` ... (chip ``i``
drawn with ``SeedSequence(seed).spawn(chips)[i]``, see :func:`sysarray.faultgen.population`);
each file's ``meta`` holds the generator, seed, chip index, settings, and the ``rate`` and
``group`` label that ``sysarray campaign --faults-dir`` reports. ``show`` prints a map readably.
"""
from __future__ import annotations

import argparse
import os
from typing import Sequence

from sysarray.cli import EXIT_OK, subcommand
from sysarray.cliargs import parse_bits, parse_registers, parse_values

FILE_PATTERN = "chip-{:04d}.npz"


def bits_label(bits: Sequence[int] | None) -> str:
    """``[0, 1, 2, 3, 31]`` -> ``"0-3,31"``; None (every bit) -> ``"all"``."""
    if bits is None:
        return "all"
    b = sorted(set(int(x) for x in bits))
    out, i = [], 0
    while i < len(b):
        j = i
        while j + 1 < len(b) and b[j + 1] == b[j] + 1:
            j += 1
        out.append(str(b[i]) if i == j else f"{b[i]}-{b[j]}")
        i = j + 1
    return ",".join(out)


def group_label(registers: Sequence[str], bits: Sequence[int] | None, values: Sequence[int]) -> str:
    """The label of a fault group, ``REGISTERS:BITS:VALUE``, e.g. ``psum:24-31:1`` or ``weight+act:all:random``."""
    value = "random" if set(values) == {0, 1} else str(next(iter(values)))
    return f"{'+'.join(registers)}:{bits_label(bits)}:{value}"


def add_fault_model_arguments(p: argparse.ArgumentParser) -> None:
    """--register, --bits, --value, --fault-model, --bernoulli, --faults-per-pe, --clusters, --seed."""
    g = p.add_argument_group("fault model")
    g.add_argument("--register", default="psum", help="registers that get stuck bits: weight, act, psum or a list (default psum)")
    g.add_argument("--bits", help="allowed bits, e.g. 24-31 or 0,5,7 (default: every bit of the register)")
    g.add_argument("--value", default="random", help="stuck value: 0, 1 or random (default)")
    g.add_argument("--fault-model", choices=("pe_rate", "ber", "clustered"), default="pe_rate",
                   help="pe_rate: the rate is faulty PEs / all PEs (default); ber: stuck bits / all register bits; "
                        "clustered: faulty PEs in Gaussian blobs at a PE rate")
    g.add_argument("--bernoulli", action="store_true",
                   help="each PE (bit) faulty independently with the rate as probability, instead of exactly "
                        "round(rate x total) faulty PEs (bits)")
    g.add_argument("--faults-per-pe", type=int, default=1, help="stuck bits per faulty PE (default 1; pe_rate, clustered)")
    g.add_argument("--clusters", type=int, default=3, help="number of blobs of the clustered model (default 3)")
    g.add_argument("--seed", type=int, default=0, help="population seed (default 0)")


def fault_model_settings(args: argparse.Namespace) -> dict:
    """The generator keyword arguments (registers, bits, values, exact, ...) from the parsed options."""
    settings: dict = {
        "registers": parse_registers(args.register),
        "bits": parse_bits(args.bits) if args.bits else None,
        "values": parse_values(args.value),
        "exact": not args.bernoulli,
    }
    if args.fault_model != "ber":
        settings["faults_per_pe"] = args.faults_per_pe
    if args.fault_model == "clustered":
        settings["n_clusters"] = args.clusters
    return settings


@subcommand
def add_faults_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "faults", help="generate chip populations as fault-map files, or show a fault-map file",
        description="Fault-map files: `generate` writes a seeded chip population, `show` prints a map.",
    )
    sub = p.add_subparsers(dest="faults_command", metavar="ACTION", parser_class=type(p))
    sub.required = True

    g = sub.add_parser(
        "generate", help="write a chip population as fault-map files DIR/chip-NNNN.npz",
        description="Draw N fault maps with one seed (chip i uses SeedSequence(seed).spawn(N)[i], so chip i does "
                    "not depend on N) and write them as fault-map files with their generator settings in 'meta'. "
                    "The same seed, rate and fault model give the chips of `sysarray campaign`.",
        epilog="Example: sysarray faults generate --array 16x16 --pe-rate 0.01 --register psum --bits 0-31 "
               "--value random --chips 20 --seed 0 -o chips/",
    )
    g.add_argument("--array", default="16x16", metavar="RxC", help="array rows x columns (default 16x16)")
    g.add_argument("--psum-bits", type=int, default=32, help="partial-sum register width, 17..32 (default 32)")
    rate = g.add_mutually_exclusive_group(required=True)
    rate.add_argument("--pe-rate", type=float, help="share of faulty PEs, in [0, 1] (pe_rate and clustered models)")
    rate.add_argument("--ber", type=float, help="bit error rate: stuck bits / all register bits, in [0, 1] (ber model)")
    add_fault_model_arguments(g)
    g.add_argument("--chips", type=int, default=20, help="number of chips (default 20)")
    g.add_argument("-o", "--out", required=True, metavar="DIR", help="output directory (created if missing)")
    g.set_defaults(func=run_faults_generate)

    s = sub.add_parser(
        "show", help="print a fault-map file (a directory: one line per file)",
        description="Print a fault-map file: a summary, the stuck bits, the generator settings, and an ASCII "
                    "picture of the array ('.' healthy PE, 'w'/'a'/'p' a stuck bit in the weight/act/psum "
                    "register, '*' several registers) for arrays up to --picture-cols columns.",
        epilog="Example: sysarray faults show chips/chip-0000.npz",
    )
    s.add_argument("file", metavar="FILE", help="a fault-map .npz file, or a directory of them")
    s.add_argument("--max-faults", type=int, default=64, help="list at most this many stuck bits (default 64; 0: all)")
    s.add_argument("--picture-cols", type=int, default=64, help="draw the array when it has at most this many columns")
    s.set_defaults(func=run_faults_show)


def run_faults_generate(args: argparse.Namespace) -> int:
    from sysarray import faultgen
    from sysarray.config import parse_array

    rows, cols = parse_array(args.array)
    if args.chips < 1:
        raise ValueError(f"--chips must be a positive integer. Got {args.chips} instead.")
    settings = fault_model_settings(args)
    method = args.fault_model
    if method == "ber":
        if args.ber is None:
            raise ValueError("The ber fault model needs --ber RATE (not --pe-rate).")
        rate, rate_key = args.ber, "ber"
    else:
        if args.pe_rate is None:
            raise ValueError(f"The {method} fault model needs --pe-rate RATE (not --ber).")
        rate, rate_key = args.pe_rate, "pe_rate"
    geometry = (rows, cols)
    kwargs = {**settings, rate_key: rate, "psum_bits": args.psum_bits}
    maps = faultgen.population(args.chips, geometry, seed=args.seed, method=method, **kwargs)
    metas = faultgen.population_meta(args.chips, geometry, seed=args.seed, method=method, **kwargs)
    label = group_label(settings["registers"], settings["bits"], settings["values"])
    os.makedirs(args.out, exist_ok=True)
    for i, (fm, meta) in enumerate(zip(maps, metas)):
        fm.save(os.path.join(args.out, FILE_PATTERN.format(i)), meta={**meta, "group": label, "rate": float(rate)})
    pes = [fm.n_faulty_pes for fm in maps]
    bits = [len(fm) for fm in maps]
    print(f"wrote {args.chips} fault maps ({rows}x{cols}, {method} {rate:g}, {label}) to {args.out}: "
          f"{min(pes)}..{max(pes)} faulty PEs, {min(bits)}..{max(bits)} stuck bits per chip")
    return EXIT_OK


def run_faults_show(args: argparse.Namespace) -> int:
    import json

    from sysarray.faultio import load_with_meta

    if os.path.isdir(args.file):
        names = sorted(n for n in os.listdir(args.file) if n.endswith(".npz"))
        if not names:
            raise ValueError(f"'{args.file}' holds no .npz fault-map files.")
        for n in names:
            fm, _ = load_with_meta(os.path.join(args.file, n))
            print(f"{n}: {fm.summary()}")
        return EXIT_OK
    fm, meta = load_with_meta(args.file)
    print(fm.to_text(max_faults=None if args.max_faults == 0 else args.max_faults, picture_max_cols=args.picture_cols))
    if meta:
        print("")
        print("meta: " + json.dumps(meta, sort_keys=True))
    return EXIT_OK
