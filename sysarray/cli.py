"""The ``sysarray`` command: one argparse program, one subcommand per library entry point.

Adding a subcommand: write ``add_<name>_parser(subparsers)`` that builds its parser and sets
``func`` (a function ``args -> int``), decorate it with :func:`subcommand`, and import the heavy
modules inside ``func`` so ``sysarray --help`` stays fast. Bad input (ValueError, TypeError,
OSError) becomes one line ``sysarray: error: ...`` on stderr and exit code 2; no traceback.
"""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Callable, NoReturn, Sequence

if TYPE_CHECKING:
    from sysarray.scalesim import CyclesRun

__all__ = ["build_parser", "main", "subcommand"]

PROG = "sysarray"
EXIT_OK = 0
EXIT_BAD_INPUT = 2

_SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


def subcommand(add_parser: Callable[[argparse._SubParsersAction], None]) -> Callable[[argparse._SubParsersAction], None]:
    """Register ``add_parser(subparsers)``, which adds one subcommand to ``sysarray``."""
    _SUBCOMMANDS.append(add_parser)
    return add_parser


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line, like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line; OSErrors as 'what: path'."""
    if isinstance(exc, OSError) and exc.strerror:
        target = f": {exc.filename}" if exc.filename is not None else ""
        return f"{exc.strerror}{target}"
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


# ------------------------------------------------------------------------------------ subcommands


@subcommand
def add_cycles_parser(subparsers: argparse._SubParsersAction) -> None:
    """``sysarray cycles``: SCALE-Sim config + topology in, COMPUTE_REPORT.csv out."""
    p = subparsers.add_parser(
        "cycles",
        help="SCALE-Sim v2 compute report (cycles, utilization) for a config and a topology",
        description=(
            "Time every layer of a SCALE-Sim v2 topology on the array of a SCALE-Sim v2 config with "
            "the closed-form, stall-free formulas, and write DIR/COMPUTE_REPORT.csv with SCALE-Sim's "
            "columns and numbers (Total Cycles, Stall Cycles, Overall Util %, Mapping Efficiency %, "
            "Compute Util %). A short table is printed too."
        ),
        epilog=(
            "Config: INI with [architecture_presets] ArrayHeight, ArrayWidth, Dataflow (os|ws|is); "
            "other keys are ignored. Conv topology rows: 'Layer name, IFMAP Height, IFMAP Width, "
            "Filter Height, Filter Width, Channels, Num Filter, Strides,'. GEMM topology rows: "
            "'Layer name, M, N, K,'. The first line of a topology is a header. "
            "Example: sysarray cycles -c scale.cfg -t alexnet.csv -o out/"
        ),
    )
    p.add_argument("-c", "--config", required=True, metavar="CONFIG.cfg", help="SCALE-Sim v2 config file")
    p.add_argument("-t", "--topology", required=True, metavar="TOPOLOGY.csv", help="SCALE-Sim v2 topology CSV")
    p.add_argument(
        "-i", "--input-type", choices=("conv", "gemm"), default="conv",
        help="topology format: conv layers or GEMM 'M, N, K' rows (default: conv)",
    )
    from sysarray.cliargs import add_out_argument

    add_out_argument(p, "dir", "DIR", "output directory (created if missing)")
    p.set_defaults(func=run_cycles_command)


def run_cycles_command(args: argparse.Namespace) -> int:
    """Run ``sysarray cycles`` and print a short table of the layers."""
    from sysarray.scalesim import run_cycles

    run = run_cycles(args.config, args.topology, args.out, kind=args.input_type)
    print(f"{run.config.run_name}: {run.config.array.rows}x{run.config.array.cols} "
          f"{run.config.array.dataflow.value.upper()}, {len(run.layers)} layer(s)")
    print(_cycles_table(run))
    print(f"wrote {run.report}")
    return EXIT_OK


def _cycles_table(run: CyclesRun) -> str:
    """A fixed-width text table: one row per layer of a :class:`sysarray.scalesim.CyclesRun`."""
    head = ("ID", "Layer", "M", "K", "N", "Folds", "Total Cycles", "Overall %", "Mapping %", "Compute %")
    rows = [head]
    for i, (layer, st) in enumerate(zip(run.layers, run.stats)):
        rows.append((
            str(i), layer.name, str(layer.m), str(layer.k), str(layer.n), str(st.folds),
            str(st.scalesim_total_cycles), f"{st.overall_util:.2f}", f"{st.mapping_efficiency:.2f}",
            f"{st.compute_util:.2f}",
        ))
    widths = [max(len(r[j]) for r in rows) for j in range(len(head))]
    lines = []
    for r in rows:
        cells = [c.ljust(w) if j == 1 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- main


# Packages above sysarray contribute their own subcommands (train, run, campaign, ...); the CLI is
# the one place that looks upward, and only to collect parsers.
PLUGIN_MODULES = ("sysarray.faults_commands", "sysarray.repair_commands", "sysarray.diagnose_commands",
                  "sysarray.kernel_commands", "accel_models.commands", "mitigation.commands")


def _load_plugins() -> None:
    import importlib

    for name in PLUGIN_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise


def build_parser() -> argparse.ArgumentParser:
    """The ``sysarray`` parser with every registered subcommand."""
    _load_plugins()
    parser = _Parser(
        prog=PROG,
        description="Exact simulation of systolic-array DNN accelerators with permanent PE faults.",
    )
    from sysarray import __version__

    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    for add_parser in _SUBCOMMANDS:
        add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``sysarray`` and ``python -m sysarray``; returns the exit code.

    Besides bad input: an interrupt (Ctrl-C, or SIGTERM, which the command turns into one) is one
    line on stderr and exit code 130; running out of memory is one ``error:`` line with a hint and
    exit code 2; a closed stdout (``sysarray ... | head``) ends the command quietly, exit code 141.
    """
    from sysarray import lifecycle, runtime

    resumable = ("campaign", "sweep", "importance", "efat", "yield")  # rerunning the same command continues them
    command = None
    try:
        with lifecycle.sigterm_as_interrupt():
            runtime.configure()  # a program's process, tuned before the subcommands load torch
            parser = build_parser()
            try:
                args = parser.parse_args(argv)
                command = args.command
                code = int(args.func(args))
            except SystemExit as exc:  # --help, --version and usage errors
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_BAD_INPUT)
            sys.stdout.flush()  # a closed pipe shows here, inside the handlers below, not at exit
            return code
    except (KeyboardInterrupt, SystemError) as raised:
        exc = lifecycle.interrupt_of(raised)
        if exc is None:
            raise
        if isinstance(exc, lifecycle.Interrupted):
            message = _one_line(exc)
        elif command in resumable:
            message = "interrupted; rerun the same command to resume"
        else:
            message = "interrupted before it finished; rerun the command to start over"
        print(f"{PROG}: {message}", file=sys.stderr)
        # CPython marks an interrupt that left code run from a string (a dataclass being made) as
        # unhandled, caught or not, and then exits by SIGINT instead of 130; running a string clears it
        exec("")
        return lifecycle.EXIT_INTERRUPTED
    except BrokenPipeError as exc:
        if lifecycle.stdout_reader_gone():
            lifecycle.silence_stdout()
            return lifecycle.EXIT_BROKEN_PIPE
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (ValueError, TypeError, OSError) as exc:
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (MemoryError, RuntimeError) as exc:
        if not lifecycle.out_of_memory(exc):
            raise
        detail = _one_line(exc) if str(exc).strip() else "an allocation failed"
        print(f"{PROG}: error: out of memory: {detail} (try a smaller array or model, fewer images, a smaller "
              "batch or fewer workers)", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
