"""``sysarray demo`` (registered with ``sysarray.cli.subcommand``)."""
from __future__ import annotations

import argparse

from sysarray.cli import EXIT_OK, subcommand
from sysarray.cliargs import add_seed_argument


@subcommand
def add_demo_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="the main demo: LeNet-5 on digits, fault-free vs faulty vs bypassed vs retrained chips",
        description="Train (once, cached in .cache/demo/) a LeNet-5 on the bundled digits, then run it on a "
                    "fault-free 16x16 chip, on chips with psum stuck-at-1 faults in high bits, on the same "
                    "chips with the faulty PEs bypassed (FAP), and with the pruned model retrained for each "
                    "chip (FAP+T).",
    )
    add_seed_argument(p, "the fault maps and the retraining")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from mitigation.demo import run_demo

    run_demo(seed=args.seed)
    return EXIT_OK
