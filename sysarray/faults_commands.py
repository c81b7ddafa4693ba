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
from sysarray.cliargs import (
    add_array_arguments, add_out_argument, add_random_fault_arguments, add_seed_argument, non_negative_int, positive_int,
)

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
                    "The same seed, rate and fault model give the chips of `sysarray campaign`; chip 0 is the map "
                    "`sysarray run` draws with the same options.",
        epilog="Example: sysarray faults generate --array 16x16 --rate 0.01 --register psum --bits 0-31 "
               "--value random --chips 20 --seed 0 -o chips/",
    )
    add_array_arguments(g, dataflow=False)
    add_random_fault_arguments(g, rate="one", title="fault model (--rate is required)", aliases=("--pe-rate", "--ber"))
    add_seed_argument(g, "the population: chip i is drawn with SeedSequence(seed).spawn(chips)[i]")
    g.add_argument("--chips", type=positive_int, default=20, metavar="N", help="number of chips (default 20)")
    add_out_argument(g, "dir", "DIR", "output directory, created if missing (required)")
    g.set_defaults(func=run_faults_generate)

    s = sub.add_parser(
        "show", help="print a fault-map file (a directory: one line per file)",
        description="Print a fault-map file: a summary, the stuck bits, the generator settings, and an ASCII "
                    "picture of the array ('.' healthy PE, 'w'/'a'/'p' a stuck bit in the weight/act/psum "
                    "register, '*' several registers) for arrays up to --picture-cols columns.",
        epilog="Example: sysarray faults show chips/chip-0000.npz",
    )
    s.add_argument("file", metavar="FILE", help="a fault-map .npz file, or a directory of them")
    s.add_argument("--max-faults", type=non_negative_int, default=64, metavar="N",
                   help="list at most N stuck bits; 0: all (default 64)")
    s.add_argument("--picture-cols", type=non_negative_int, default=64, metavar="N",
                   help="draw the array when it has at most N columns (default 64)")
    s.set_defaults(func=run_faults_show)


def run_faults_generate(args: argparse.Namespace) -> int:
    from sysarray import faultgen
    from sysarray.cliargs import check_rates_place_faults, random_fault_settings, rate_keyword, require
    from sysarray.config import parse_array

    rows, cols = parse_array(args.array)
    rate = require(args, "rate", "--rate R")
    method, settings = random_fault_settings(args)
    check_rates_place_faults([rate], method, settings["exact"], rows, cols, args.psum_bits, "--rate")
    geometry = (rows, cols)
    kwargs = {**settings, rate_keyword(method): rate, "psum_bits": args.psum_bits}
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
