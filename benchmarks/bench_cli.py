"""Start-up time of the `sysarray` command: `sysarray --help` and every `sysarray COMMAND --help`.

Run from the repository root::

    .venv/bin/python benchmarks/bench_cli.py [--quick] [--repeats N] [--out DIR]

Each command line runs in a fresh process, the way a user types it: the ``sysarray`` console
script next to this interpreter (``python -m sysarray`` where there is none), output discarded.
The figure is the wall time from start to exit, which includes starting Python, importing the
parser's modules, building the parser and printing the help; a command whose parser module
imports torch or numba at load time misses the target (``TARGET_S``, 0.5 s) by itself. One
untimed round first (it fills the OS file cache and compiles stale ``.pyc`` files; its time is
kept as ``first_call_s``), then ``--repeats`` rounds, one run of every command line per round so
a slow spell of a shared machine hits all of them alike; the median is reported. Writes
``OUT/bench_cli.json``.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import sysarray.runtime

TUNING = sysarray.runtime.configure()  # a program: tuned first, as every benchmark (its children are not)

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import format_table, provenance, summarize_times, write_json  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TARGET_S = 0.5


def launcher() -> list[str]:
    """How a user starts the command: the console script beside this interpreter, else ``python -m sysarray``."""
    script = Path(sys.executable).parent / "sysarray"
    return [str(script)] if script.is_file() and os.access(script, os.X_OK) else [sys.executable, "-m", "sysarray"]


def command_lines() -> list[list[str]]:
    """``["--help"]`` and ``[COMMAND, ..., "--help"]`` for every subcommand, nested ones included."""
    from sysarray.cli import build_parser

    def walk(parser: argparse.ArgumentParser, prefix: list[str]):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    nested = list(walk(sub, [*prefix, name]))
                    yield from nested or [[*prefix, name]]

    return [["--help"]] + [[*words, "--help"] for words in walk(build_parser(), [])]


def run_once(argv: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited with {proc.returncode}: {proc.stderr.decode().strip()}")
    return seconds


def measure(lines: list[list[str]], repeats: int) -> list[dict]:
    start = launcher()
    first = {i: run_once([*start, *words]) for i, words in enumerate(lines)}
    times: dict[int, list[float]] = {i: [] for i in range(len(lines))}
    for _ in range(repeats):
        for i, words in enumerate(lines):
            times[i].append(run_once([*start, *words]))
    results = []
    for i, words in enumerate(lines):
        summary = summarize_times(times[i], first[i])
        results.append({"command": "sysarray " + " ".join(words), **summary,
                        "meets_target": summary["median_s"] <= TARGET_S})
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 repeats (a smoke run)")
    ap.add_argument("--repeats", type=int, default=7, help="timed runs of every command line (default 7)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="folder of bench_cli.json "
                                                                                 "(default benchmarks/results)")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error(f"--repeats must be at least 1. Got {args.repeats} instead.")
    repeats = 3 if args.quick else args.repeats
    lines = command_lines()
    results = measure(lines, repeats)
    rows = [(r["command"], r["median_s"], r["min_s"], r["max_s"], r["first_call_s"], r["meets_target"])
            for r in results]
    print(format_table(["command line", "median s", "min s", "max s", "first s", f"<= {TARGET_S} s"], rows,
                       title=f"sysarray start-up, fresh process per run, median of {repeats} (target {TARGET_S} s)"))
    write_json(Path(args.out) / "bench_cli.json",
               {"benchmark": "bench_cli", "target_s": TARGET_S, "repeats": repeats, "launcher": launcher(),
                "results": results, "all_meet_target": all(r["meets_target"] for r in results),
                **provenance(TUNING, "quick" if args.quick else "full", REPO)})
    print(f"wrote {Path(args.out) / 'bench_cli.json'}")
    return 0 if all(r["meets_target"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
