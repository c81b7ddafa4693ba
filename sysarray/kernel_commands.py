"""``sysarray kernels`` (registered with ``sysarray.cli.subcommand``): the measured kernel choices
and threading layer this machine keeps (:mod:`sysarray.kernel_cache`,
:mod:`sysarray.threading_choice`), shown, cleared or (the layer) measured."""
from __future__ import annotations

import argparse

import os

from sysarray.cli import EXIT_OK, subcommand
from sysarray.cliargs import add_quiet_argument, positive_int


@subcommand
def add_kernels_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "kernels", help="show, clear or measure the kernel choices and threading layer of this machine",
        description="The engines compute each exact integer product on whichever exact kernel measured faster "
                    "on this machine (int8 GEMMs, float32 exact by bound, serial or threaded compilations), "
                    "measured on first use per shape class and kept in one file per machine signature. numba's "
                    "threading layer and the OpenMP threads' spin are fixed when a process starts its threads, so "
                    "they are measured apart, by --measure-layer: a faulty-chip workload timed in child processes "
                    "under each pair of settings, the fastest kept for the thread count and used by every later "
                    "sysarray process. This command prints the "
                    "files' machine signature and choices, or deletes them (--clear) so the next runs measure again "
                    "(docs/performance.md).",
        epilog="Example: sysarray kernels; sysarray kernels --measure-layer; sysarray kernels --clear",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--clear", action="store_true", help="delete this machine's choice files (default: show them)")
    g.add_argument("--measure-layer", action="store_true",
                   help="time numba's workqueue and OpenMP threading layers, each with a short and with "
                        "libgomp's default spin, on a faulty-chip workload (child processes, about a minute) and "
                        "keep the fastest for later sysarray processes (default: show the choices)")
    p.add_argument("--threads", type=positive_int, metavar="N",
                   help="with --measure-layer: the thread count to measure for (default: the usable cores)")
    p.add_argument("--repeats", type=positive_int, default=3, metavar="N",
                   help="with --measure-layer: child processes per setting, alternating (default 3)")
    add_quiet_argument(p)
    p.set_defaults(func=run_kernels)


def run_kernels(args: argparse.Namespace) -> int:
    from sysarray import kernel_cache, threading_choice

    if (args.threads is not None or args.repeats != 3) and not args.measure_layer:
        raise ValueError("--threads and --repeats apply to --measure-layer.")
    if args.clear:
        print(f"deleted {kernel_cache.clear()} and {threading_choice.clear()}")
        return EXIT_OK
    if args.measure_layer:
        return _measure_layer(args)
    sig = kernel_cache.machine_signature()
    print(f"machine: {sig['cpu']} ({sig['arch']}; {' '.join(sig['flags']) or 'no listed vector/int8 flags'}); "
          f"torch {sig['torch']}, numba {sig['numba']}, Python {sig['python']}")
    layers = threading_choice.recorded_all()
    print(f"threading settings file (numba layer/OpenMP spin): {threading_choice.path()}")
    if layers:
        for n, entry in sorted(layers.items(), key=lambda kv: int(kv[0])):
            times = ", ".join(f"{k} {1e3 * v:.3g}" for k, v in entry["median_s"].items())
            print(f"  {n} thread(s): {entry['settings']} (median ms per probe round: {times})")
    else:
        print(f"  nothing measured (`sysarray kernels --measure-layer`); processes use the numba layer "
              f"{os.environ.get('NUMBA_THREADING_LAYER', 'numba chooses')} and libgomp's own OpenMP spin")
    print(f"kernel choices file (this process's layer, {sig['threading_layer']}): {kernel_cache.path()}")
    choices = kernel_cache.recorded()
    if not choices:
        print("no choices measured yet")
        return EXIT_OK
    # a decision is final once two measurements in a row agree; until then processes measure it again
    rows = [("choice", "key", "kernel", "status", "median ms per option")]
    for name in sorted(choices):
        for key, entry in sorted(choices[name].items()):
            times = ", ".join(f"{k} {1e3 * v:.3g}" for k, v in entry["median_s"].items())
            status = "confirmed" if entry.get("confirmations", 1) >= kernel_cache.CONFIRMATIONS else "to recheck"
            rows.append((name, key, str(entry["option"]), status, times))
    widths = [max(len(r[j]) for r in rows) for j in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])
    return EXIT_OK


def _measure_layer(args: argparse.Namespace) -> int:
    import sys

    from tqdm.auto import tqdm

    from sysarray import threading_choice
    from sysarray.runtime import usable_cores

    threads = args.threads or usable_cores()
    bar = tqdm(total=args.repeats * len(threading_choice.CANDIDATES), desc="threading settings", unit="process",
               disable=args.quiet, leave=False)

    def on_probe(candidate, got) -> None:
        bar.update(1)
        if isinstance(got, str):
            print(f"{candidate}: cannot run here ({got})", file=sys.stderr)

    try:
        res = threading_choice.measure(threads, args.repeats, on_probe=on_probe)
    finally:
        bar.close()
    if res["settings"] is None:
        raise ValueError("no threading setting ran the probe; see the lines above.")
    print("numba layer/OpenMP spin: median ms per probe round over "
          f"{args.repeats} process(es) each")
    for candidate, median in sorted(res["median_s"].items(), key=lambda kv: kv[1]):
        print(f"  {candidate:<18} {1e3 * median:.2f}")
    where = res["file"] or "memory only (the choice files are off)"
    print(f"{threads} thread(s): {res['settings']} is the fastest here; kept in {where}, used by later sysarray "
          f"processes")
    return EXIT_OK
