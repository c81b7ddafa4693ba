"""``sysarray repair`` (registered with ``sysarray.cli.subcommand``): the spare allocation of one chip.

Reads the fault-map file of a physical array with spare rows and columns, runs
:func:`sysarray.repair.allocate_repair` and prints the plan (and writes it as JSON with ``-o``).
"""
from __future__ import annotations

import argparse

from sysarray.cli import EXIT_OK, subcommand
from sysarray.cliargs import (
    add_out_argument, non_negative_int, positive_int, psum_bits_type, register_list,
)
from sysarray.repair import DEFAULT_MAX_NODES  # light (numpy only): the parser states the default


@subcommand
def add_repair_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "repair", help="choose the rows and columns to fuse out of an array with spares (a repair plan)",
        description="Read the fault map of a physical array with spare rows and columns, find the rows and "
                    "columns to fuse out (must-repair analysis, then an exact branch and bound: the fewest "
                    "faulty PEs left, then the fewest spares used) and print the plan; -o writes it as JSON. "
                    "The file sets the physical array; the logical array is that less the spares (docs/repair.md).",
        epilog="Example: sysarray repair chips/chip-0000.npz --spare-rows 2 --spare-cols 2 -o plan.json",
    )
    p.add_argument("file", metavar="CHIP.npz", help="fault-map file of the physical array (spares included)")
    p.add_argument("--spare-rows", type=non_negative_int, default=0, metavar="N", help="spare rows (default 0)")
    p.add_argument("--spare-cols", type=non_negative_int, default=0, metavar="N", help="spare columns (default 0)")
    p.add_argument("--psum-bits", type=psum_bits_type, default=32, metavar="17..32",
                   help="partial-sum register width in bits; the map's psum faults must fit it (default 32)")
    p.add_argument("--count-registers", type=register_list, default=None, metavar="REGS",
                   help="only faults in these registers need repair, e.g. psum or weight,act (default: all)")
    p.add_argument("--max-nodes", type=positive_int, default=DEFAULT_MAX_NODES, metavar="N",
                   help="search nodes before the best plan found is returned, marked not proven optimal "
                        f"(default {DEFAULT_MAX_NODES})")
    add_out_argument(p, "file", "PLAN.json", "write the plan as JSON (default: print only)", required=False)
    p.set_defaults(func=run_repair)


def run_repair(args: argparse.Namespace) -> int:
    from sysarray.config import ArrayConfig
    from sysarray.faultio import load
    from sysarray.repair import allocate_repair, logical_map, must_repair

    fm = load(args.file, psum_bits=args.psum_bits)
    rows, cols = fm.rows - args.spare_rows, fm.cols - args.spare_cols
    if rows < 1 or cols < 1:
        raise ValueError(f"--spare-rows {args.spare_rows} and --spare-cols {args.spare_cols} leave no logical array "
                         f"in the {fm.rows}x{fm.cols} array of '{args.file}'; give fewer spares than rows and columns.")
    cfg = ArrayConfig(rows, cols, psum_bits=args.psum_bits, spare_rows=args.spare_rows, spare_cols=args.spare_cols)
    must = must_repair(cfg, fm, registers=args.count_registers)
    plan = allocate_repair(cfg, fm, registers=args.count_registers, max_nodes=args.max_nodes)
    counted = "all registers" if args.count_registers is None else "+".join(args.count_registers)
    print(f"{fm.summary()} ({counted} counted)")
    fits = "fit the spares" if must.fits else "exceed the spares: no complete repair"
    print(f"must-repair rows {list(must.rows)}, columns {list(must.cols)} ({fits})")
    print(plan.summary())
    print(f"logical {rows}x{cols}: {logical_map(cfg, fm, plan).summary()}")
    if args.out:
        plan.save(args.out)
        print(f"wrote {args.out}")
    return EXIT_OK
