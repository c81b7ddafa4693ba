"""``sysarray kernels`` (registered with ``sysarray.cli.subcommand``): the measured kernel choices
this machine keeps (:mod:`sysarray.kernel_cache`), shown or cleared."""
from __future__ import annotations

import argparse

from sysarray.cli import EXIT_OK, subcommand


@subcommand
def add_kernels_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "kernels", help="show or clear the kernel choices measured on this machine",
        description="The engines compute each exact integer product on whichever exact kernel measured faster "
                    "on this machine (int8 GEMMs, float32 exact by bound, serial or threaded compilations), "
                    "measured on first use per shape class and kept in one file per machine signature. This "
                    "command prints that file's machine signature and choices, or deletes it (--clear) so the "
                    "next runs measure again (docs/performance.md).",
        epilog="Example: sysarray kernels; sysarray kernels --clear",
    )
    p.add_argument("--clear", action="store_true", help="delete this machine's choices file (default: show it)")
    p.set_defaults(func=run_kernels)


def run_kernels(args: argparse.Namespace) -> int:
    from sysarray import kernel_cache

    if args.clear:
        print(f"deleted {kernel_cache.clear()}")
        return EXIT_OK
    sig = kernel_cache.machine_signature()
    print(f"machine: {sig['cpu']} ({sig['arch']}; {' '.join(sig['flags']) or 'no listed vector/int8 flags'}); "
          f"torch {sig['torch']}, numba {sig['numba']}, Python {sig['python']}")
    print(f"file: {kernel_cache.path()}")
    choices = kernel_cache.recorded()
    if not choices:
        print("no choices measured yet")
        return EXIT_OK
    rows = [("choice", "key", "kernel", "median ms per option")]
    for name in sorted(choices):
        for key, entry in sorted(choices[name].items()):
            times = ", ".join(f"{k} {1e3 * v:.3g}" for k, v in entry["median_s"].items())
            rows.append((name, key, str(entry["option"]), times))
    widths = [max(len(r[j]) for r in rows) for j in range(3)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3])
    return EXIT_OK
