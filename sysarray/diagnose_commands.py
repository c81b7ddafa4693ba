"""``sysarray diagnose`` (registered with ``sysarray.cli.subcommand``): reconstruct a simulated
chip's hidden fault map from test-GEMM outputs alone and score it against the map
(docs/diagnosis.md)."""
from __future__ import annotations

import argparse

from sysarray.cli import EXIT_OK, subcommand
from sysarray.cliargs import (
    add_array_arguments, add_faults_file_argument, add_out_argument, add_random_fault_arguments, add_seed_argument,
    non_negative_int, positive_int,
)

COLUMNS = ("located", "missed", "false_alarms", "aliased", "undetectable")


@subcommand
def add_diagnose_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "diagnose", help="find a chip's hidden fault map from test-GEMM outputs alone",
        description="Treat a simulated chip (a --faults file or a random map) as a black box that only returns GEMM "
                    "outputs, apply test GEMMs designed for its dataflow, reconstruct its stuck bits (PE, register, "
                    "bit, value), confirm the map with the exact engine, and compare it with the hidden map: per "
                    "register the bits located exactly, missed, false alarms, aliased (candidates the tests cannot "
                    "tell apart) and undetectable (masked by another fault); and the test cost in cycles.",
        epilog="Example: sysarray diagnose --array 16x16 --dataflow ws --rate 0.02 --register weight,act,psum "
               "--seed 0 -o diagnosis.json",
    )
    g = p.add_argument_group("chip")
    add_array_arguments(g, from_file=True)
    add_faults_file_argument(g, required=False,
                             help="the chip's hidden fault-map file (`sysarray faults generate`); it sets the array "
                                  "size (default: a random map with --rate, else a fault-free chip)")
    add_random_fault_arguments(p, rate="one", title="random hidden fault map (instead of --faults)")
    t = p.add_argument_group("test")
    t.add_argument("--refinements", type=non_negative_int, default=8, metavar="N",
                   help="at most N adaptive random test GEMMs to split aliased candidates; 0: fixed tests only "
                        "(default 8)")
    t.add_argument("--tile-stream", type=positive_int, default=3136, metavar="T",
                   help="stream length of the reference inference tile the test cost is compared with (default "
                        "3136, 56x56 output pixels)")
    add_seed_argument(p, "the random hidden map, the OS test patterns and the refinement tests")
    add_out_argument(p, "file", "REPORT.json", "write the full report as JSON (default: none)", required=False)
    p.set_defaults(func=run_diagnose)


def _table(scores: dict) -> str:
    head = ("register",) + tuple(c.replace("_", " ") for c in COLUMNS)
    rows = [head] + [(name,) + tuple(str(getattr(s, c)) for c in COLUMNS) for name, s in scores.items()]
    widths = [max(len(r[j]) for r in rows) for j in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)


def run_diagnose(args: argparse.Namespace) -> int:
    from sysarray.atomic import write_json
    from sysarray.chip import Chip
    from sysarray.cliargs import chip_from_args
    from sysarray.diagnosis import diagnose
    from sysarray.faults import FaultMap

    args.bypass = False
    cfg, hidden = chip_from_args(args)
    hidden = hidden if hidden is not None else FaultMap(cfg.rows, cfg.cols)
    result = diagnose(Chip(cfg, hidden), cfg, seed=args.seed, refinements=args.refinements,
                      tile_stream=args.tile_stream)
    scores = result.score(hidden)
    print(f"{cfg}: {len(hidden)} hidden stuck bit(s); located {len(result.faults)}, "
          f"{len(result.aliased)} aliased group(s), {len(result.undetectable)} undetectable site(s); "
          f"{'confirmed' if result.confirmed else 'NOT confirmed: ' + ', '.join(result.unexplained)}")
    print(_table(scores))
    print(f"test cost: {result.tests} GEMMs ({result.refinement_tests} adaptive), {result.cycles} cycles = "
          f"{100 * result.tile_share:.2f}% of one {cfg.rows}x{cfg.cols} tile streaming {result.tile_stream}")
    if args.out:
        write_json(args.out, {"command": "diagnose", "seed": args.seed, "hidden": len(hidden),
                              **result.to_dict(hidden)})
        print(f"wrote {args.out}")
    return EXIT_OK
