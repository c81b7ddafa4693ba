"""The ``sysarray`` command-line vocabulary, defined once (documented in docs/cli.md).

Every subcommand builds its parser from the helpers here, so an option has one name, one type
and one default wherever it appears:

- argparse types (:func:`positive_int`, :func:`probability`, :func:`rate_list`,
  :func:`output_file`, ...): values are checked while the command line is parsed, before any
  work, and a bad one is one usage-error line naming the option;
- ``add_*`` helpers: the shared options (checkpoint and data, chip, random fault maps, fault-map
  files, device, seed, outputs) and :func:`add_deprecated_alias` for old spellings, which still
  work for one release with a warning and are hidden from ``--help``;
- readers (:func:`chip_from_args`, :func:`random_fault_settings`, :func:`draw_random_map`,
  :func:`resolve_device`, ...): the parsed options as library arguments.

This module only imports sysarray's light modules (numpy, no torch), so building the parser of
``sysarray --help`` stays fast.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from sysarray.atomic import write_json
from sysarray.config import ArrayConfig, parse_array
from sysarray.faults import FaultMap, as_register
from sysarray.validation import cuda_unavailable

PROG = "sysarray"
DEFAULT_ARRAY = "16x16"
FAULT_MODELS = ("pe_rate", "ber", "clustered")
PE_RATE_MODELS = ("pe_rate", "clustered")  # the models whose rate is faulty PEs / all PEs
VALUES = ("0", "1", "random")
DEVICES = ("cpu", "cuda")


def warn(message: str) -> None:
    """One warning line on stderr, in the format of the command's error lines."""
    print(f"{PROG}: warning: {message}", file=sys.stderr)


# ------------------------------------------------------------------------------ value parsers
def parse_bits(text: str, option: str = "--bits") -> list[int]:
    """``"24-31"``, ``"0,5,7"`` or ``"0-3,31"`` -> sorted bit positions."""
    bits: set[int] = set()
    for part in str(text).split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-"))
                if lo > hi or lo < 0:
                    raise ValueError
                bits.update(range(lo, hi + 1))
            else:
                bit = int(part)
                if bit < 0:
                    raise ValueError
                bits.add(bit)
        except ValueError:
            raise ValueError(f"{option} must list bit positions like 24-31 or 0,5,7. Got {text!r} instead.") from None
    return sorted(bits)


def parse_registers(text: str, option: str = "--register") -> tuple[str, ...]:
    """``"psum"`` or ``"weight,act"`` -> register names."""
    return tuple(as_register(r.strip(), option).value for r in str(text).split(","))


def parse_values(text: str, option: str = "--value") -> tuple[int, ...]:
    """``"0"``, ``"1"`` or ``"random"`` -> the stuck values a fault may take."""
    table = {"0": (0,), "1": (1,), "random": (0, 1), "0,1": (0, 1)}
    if text not in table:
        raise ValueError(f"{option} must be 0, 1 or random. Got {text!r} instead.")
    return table[text]


# ------------------------------------------------------------------------------ argparse types
def _bad(requirement: str, text: object) -> argparse.ArgumentTypeError:
    # no final period: the parser appends "(see 'sysarray CMD --help')"
    return argparse.ArgumentTypeError(f"must be {requirement}. Got {str(text)!r} instead")


def _named(name: str, fn: Callable[[str], Any]) -> Callable[[str], Any]:
    fn.__name__ = name
    return fn


def _as_int(text: str) -> int | None:
    try:
        return int(str(text).strip())
    except ValueError:
        return None


def _as_float(text: str) -> float | None:
    try:
        return float(str(text).strip())
    except ValueError:
        return None


def int_at_least(lo: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``lo``."""
    what = {0: "a non-negative integer", 1: "a positive integer"}.get(lo, f"an integer of at least {lo}")

    def parse(text: str) -> int:
        v = _as_int(text)
        if v is None or v < lo:
            raise _bad(what, text)
        return v

    return _named(f"int_at_least_{lo}", parse)


def int_within(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type: an integer within ``lo..hi``."""
    def parse(text: str) -> int:
        v = _as_int(text)
        if v is None or not lo <= v <= hi:
            raise _bad(f"an integer within {lo}..{hi}", text)
        return v

    return _named(f"int_within_{lo}_{hi}", parse)


non_negative_int = int_at_least(0)
positive_int = int_at_least(1)


def float_within(lo: float, hi: float = math.inf, *, lo_open: bool = False, hi_open: bool = False,
                 allow_inf: bool = False, what: str | None = None) -> Callable[[str], float]:
    """An argparse type: a number within ``[lo, hi]`` (open ends where asked); finite unless ``allow_inf``."""
    if what is None:
        left, right = "(" if lo_open else "[", ")" if hi_open else "]"
        what = f"a number within {left}{lo:g}, {hi:g}{right}" if math.isfinite(hi) else \
            (f"a number above {lo:g}" if lo_open else f"a number of at least {lo:g}")

    def parse(text: str) -> float:
        v = _as_float(text)
        ok = v is not None and not math.isnan(v) and (allow_inf or math.isfinite(v))
        ok = ok and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
        if not ok:
            raise _bad(what, text)
        return float(v)  # type: ignore[arg-type]

    return _named("number", parse)


probability = float_within(0.0, 1.0)
open_probability = float_within(0.0, 1.0, lo_open=True, hi_open=True)
positive_float = float_within(0.0, lo_open=True, what="a positive number")
non_negative_float = float_within(0.0, what="a non-negative number")


def number_list(lo: float = 0.0, hi: float = math.inf, example: str = "0,1,2") -> Callable[[str], list[float]]:
    """An argparse type: comma-separated distinct numbers within ``[lo, hi]``, at least one."""
    what = f"comma-separated distinct numbers within [{lo:g}, {hi:g}], e.g. {example}" if math.isfinite(hi) else \
        f"comma-separated distinct numbers of at least {lo:g}, e.g. {example}"

    def parse(text: str) -> list[float]:
        values = [_as_float(t) for t in str(text).split(",") if t.strip()]
        if not values or any(v is None or not math.isfinite(v) or not lo <= v <= hi for v in values) \
                or len(set(values)) != len(values):
            raise _bad(what, text)
        return [float(v) for v in values]  # type: ignore[arg-type]

    return _named("number_list", parse)


rate_list = number_list(0.0, 1.0, "0,0.01,0.02")


def array_size(text: str) -> str:
    """An argparse type: ``RxC`` (e.g. 16x16), as ``"RxC"``."""
    try:
        rows, cols = parse_array(text)
    except (ValueError, TypeError) as exc:
        raise argparse.ArgumentTypeError(str(exc).rstrip(".")) from None
    return f"{rows}x{cols}"


def register_list(text: str) -> tuple[str, ...]:
    """An argparse type: ``psum`` or a list ``weight,act``."""
    try:
        return parse_registers(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).rstrip(".")) from None


def bit_list(text: str) -> list[int]:
    """An argparse type: bit positions like ``24-31`` or ``0,5,7`` (checked against the register later)."""
    try:
        return parse_bits(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).rstrip(".")) from None


psum_bits_type = int_within(17, 32)


# ------------------------------------------------------------------------------ output paths
def check_output(path: str | os.PathLike[str], kind: str = "file", option: str = "-o/--out") -> str:
    """Raise a ValueError naming ``path`` unless a ``kind`` ("file" or "dir") can be written there.

    A file must not be an existing directory, a directory not an existing file; the nearest
    existing folder on the way must be a writable folder (missing folders are created when the
    output is written). Commands call this while parsing, before any work. ``option`` starts the
    message (empty: the message starts at the path).
    """
    text = os.fspath(path)
    who = f"{option} '{text}'".lstrip()
    if not str(text).strip():
        raise ValueError(f"{option or 'The output'} must be a path. Got {text!r} instead.")
    p = Path(text)
    if kind == "file" and p.is_dir():
        raise ValueError(f"{who} is an existing directory; expected the path of a file to write.")
    if kind == "dir" and p.exists() and not p.is_dir():
        raise ValueError(f"{who} is an existing file; expected a directory (created if missing).")
    folder = p if kind == "dir" and p.is_dir() else p.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"{who} cannot be created: '{folder}' is a file, not a directory.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{who} cannot be written: the directory '{folder}' is not writable.")
    return text


def _output_type(kind: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        try:
            return check_output(text, kind, option="")  # argparse names the option
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc).rstrip(".")) from None

    return _named(f"output_{kind}", parse)


output_file = _output_type("file")
output_dir = _output_type("dir")


def add_out_argument(p: argparse.ArgumentParser, kind: str, metavar: str, help: str, required: bool = True) -> None:
    """``-o/--out``: the command's primary output, checked while parsing."""
    p.add_argument("-o", "--out", required=required, metavar=metavar, type=output_dir if kind == "dir" else output_file,
                   help=help)


def add_json_argument(p: argparse.ArgumentParser, what: str = "the results") -> None:
    """``--json OUT.json``: a JSON copy of what the command prints, checked while parsing."""
    p.add_argument("--json", metavar="OUT.json", type=output_file,
                   help=f"also write {what} as JSON to this file (default: none)")


# ------------------------------------------------------------------------------ deprecated aliases
def _warn_after(func: Callable[[argparse.Namespace], int], pending: list[str]) -> Callable[[argparse.Namespace], int]:
    """``func`` that prints the ``pending`` warnings once it has succeeded."""
    def run(args: argparse.Namespace) -> int:
        code = func(args)
        for message in pending:
            warn(message)
        return code

    return run


class _DeprecatedAlias(argparse.Action):
    """An old spelling: stores into the new option's ``dest`` and warns on stderr.

    The warning is printed when the command has finished: a command that fails on bad input
    prints its one error line only.
    """

    def __init__(self, option_strings, dest, *, use: str, convert: Callable[[Any], Any] | None = None,
                 implies: dict | None = None, **kwargs) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.use, self.convert, self.implies = use, convert, dict(implies or {})

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        message = f"{option_string} is deprecated and will be removed in the next release; use {self.use}"
        pending = getattr(namespace, "deprecation_warnings", None)
        if pending is None and callable(getattr(namespace, "func", None)):
            pending = namespace.deprecation_warnings = []
            namespace.func = _warn_after(namespace.func, pending)
        if pending is None:
            warn(message)  # no command to finish
        else:
            pending.append(message)
        if self.convert is not None:
            try:
                values = self.convert(values)
            except ValueError as exc:
                parser.error(f"argument {option_string}: {str(exc).rstrip('.')}")
        setattr(namespace, self.dest, values)
        for key, value in self.implies.items():
            setattr(namespace, key, value)


def add_deprecated_alias(p: argparse.ArgumentParser | Any, old: str, dest: str, use: str, *, type=None, choices=None,
                         convert: Callable[[Any], Any] | None = None, implies: dict | None = None,
                         metavar: str | None = None) -> None:
    """Accept ``old`` for one more release as the option stored in ``dest`` (hidden from --help).

    ``use`` is what the warning tells the user to write instead; ``convert`` maps the old value
    to the new one; ``implies`` sets further attributes (e.g. the fault model an old rate option
    stood for).
    """
    p.add_argument(old, dest=dest, action=_DeprecatedAlias, use=use, type=type, choices=choices, convert=convert,
                   implies=implies, metavar=metavar, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


# ------------------------------------------------------------------------------ shared options
def add_model_argument(p: argparse.ArgumentParser) -> None:
    """``--model MODEL.pt``: always a checkpoint file."""
    p.add_argument("--model", required=True, metavar="MODEL.pt",
                   help="checkpoint written by `sysarray train`, `sysarray import-model`, `clip` or `fat` (required)")


def add_data_arguments(p: argparse.ArgumentParser, what: str = "dataset to test on") -> None:
    """``--dataset`` and ``--data-dir``."""
    p.add_argument("--dataset", help=f"{what}: a name (digits, mnist, fashion-mnist, cifar10) or a path to an .npz file "
                                     "or an image folder (default: the checkpoint's dataset)")
    p.add_argument("--data-dir", metavar="DIR",
                   help="directory of a named dataset's files (mnist, fashion-mnist, cifar10; default: the dataset's "
                        "standard location)")


def add_limit_argument(p: argparse.ArgumentParser, minimum: int = 1) -> None:
    """``--limit N``: the first N test images."""
    p.add_argument("--limit", type=int_at_least(minimum), metavar="N",
                   help="use only the first N test images (default: the whole test split)")


def add_seed_argument(p: argparse.ArgumentParser, what: str) -> None:
    """``--seed S`` (>= 0): seeds every random draw of the command."""
    p.add_argument("--seed", type=non_negative_int, default=0, metavar="S", help=f"seed of {what} (default 0)")


def add_quiet_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars (default: progress bars on stderr)")


def add_device_argument(p: argparse.ArgumentParser, cpu_only: str | None = None, cuda: str | None = None) -> None:
    """``--device {cpu,cuda}``; ``cpu_only`` is why the command runs on the CPU only (cuda is then
    refused); ``cuda``: what the command does differently on a GPU, for the help."""
    extra = f"; this command runs on the CPU only ({cpu_only})" if cpu_only else f"; cuda: {cuda}" if cuda else ""
    p.add_argument("--device", choices=DEVICES, default="cpu",
                   help=f"where torch computes: cpu or cuda (needs a CUDA-enabled torch) (default cpu){extra}")
    p.set_defaults(cpu_only_reason=cpu_only)


def resolve_device(args: argparse.Namespace, command: str) -> str | None:
    """The device to pass to the library (None: its CPU default); a ValueError when cuda cannot be used."""
    device = getattr(args, "device", "cpu")
    if device == "cpu":
        return None
    reason = getattr(args, "cpu_only_reason", None)
    if reason:
        raise ValueError(f"sysarray {command} runs on the CPU only ({reason}); leave out --device cuda.")
    why = cuda_unavailable()
    if why is not None:
        import torch

        raise ValueError(f"--device cuda needs a CUDA-enabled torch and a GPU; this torch {torch.__version__} {why}. "
                         "Use --device cpu.")
    return "cuda"


def add_array_arguments(p: argparse.ArgumentParser | Any, *, from_file: bool = False, bypass: str | None = None,
                        dataflow: bool = True) -> None:
    """``--array``, ``--dataflow`` (unless ``dataflow`` is False), ``--psum-bits`` and (with
    ``bypass`` as its help) ``--bypass``.

    ``from_file``: the array size defaults to the one recorded in the ``--faults`` file.
    """
    default = None if from_file else DEFAULT_ARRAY
    where = f"(default: the --faults file's size, else {DEFAULT_ARRAY})" if from_file else f"(default {DEFAULT_ARRAY})"
    p.add_argument("--array", type=array_size, default=default, metavar="RxC",
                   help=f"array rows x columns, e.g. 16x16 {where}")
    if dataflow:
        p.add_argument("--dataflow", choices=("ws", "os", "is"), default="ws",
                       help="weight-, output- or input-stationary (default ws)")
    p.add_argument("--psum-bits", type=psum_bits_type, default=32, metavar="17..32",
                   help="partial-sum register width in bits (default 32)")
    if bypass is not None:
        p.add_argument("--bypass", action="store_true", help=bypass)


def array_config(args: argparse.Namespace, bypass: bool | None = None, size: str | None = None) -> ArrayConfig:
    """The ArrayConfig of ``--array`` (or ``size``), ``--dataflow``, ``--psum-bits`` and ``--bypass``
    (unless ``bypass`` is given)."""
    rows, cols = parse_array(size or args.array or DEFAULT_ARRAY)
    by = bool(getattr(args, "bypass", False)) if bypass is None else bypass
    return ArrayConfig(rows, cols, args.dataflow, psum_bits=args.psum_bits, bypass=by)


def add_engine_argument(p: argparse.ArgumentParser | Any) -> None:
    p.add_argument("--engine", choices=("fast", "cycle"), default="fast",
                   help="fast: exact whole-matrix engine; cycle: clock-level reference, slow (default fast)")


def require(args: argparse.Namespace, dest: str, option: str) -> Any:
    """The value of a required option that has a deprecated alias (argparse cannot require either spelling)."""
    value = getattr(args, dest, None)
    if value is None:
        raise ValueError(f"the following argument is required: {option}")
    return value


def add_faults_file_argument(p: argparse.ArgumentParser | Any, *, required: bool, alias: str | None = None,
                             help: str | None = None) -> None:
    """``--faults CHIP.npz``: one chip's fault-map file (``alias``: its deprecated old name; a
    required option with an alias is checked by :func:`require`)."""
    p.add_argument("--faults", required=required and not alias, metavar="CHIP.npz",
                   help=help or "the chip's fault-map file (`sysarray faults generate`)" + (" (required)" if required else ""))
    if alias:
        add_deprecated_alias(p, alias, "faults", "--faults CHIP.npz", metavar="CHIP.npz")


def add_faults_dir_argument(p: argparse.ArgumentParser | Any, *, required: bool, alias: str | None = None,
                            help: str | None = None) -> None:
    """``--faults-dir DIR``: a population of fault-map files (``alias``: its deprecated old name)."""
    p.add_argument("--faults-dir", required=required and not alias, metavar="DIR",
                   help=help or "directory of fault-map files (*.npz), one per chip" + (" (required)" if required else ""))
    if alias:
        add_deprecated_alias(p, alias, "faults_dir", "--faults-dir DIR", metavar="DIR")


def add_random_fault_arguments(p: argparse.ArgumentParser, *, rate: str | None, models: Sequence[str] = FAULT_MODELS,
                               extras: bool = True, bits_default: str | None = None, rates_help: str | None = None,
                               value_help: str = "each stuck bit 0 or 1 with equal probability",
                               title: str = "random fault maps", aliases: Iterable[str] = ()) -> Any:
    """The options that describe a random fault map; returns their argument group.

    ``rate``: "one" adds ``--rate R`` (one chip), "list" adds ``--rates LIST`` (a population or a
    grid), None neither. ``models``: the ``--fault-model`` choices the command can draw (no option
    when there is one). ``extras``: ``--bernoulli``, ``--faults-per-pe`` and ``--clusters``.
    ``aliases``: deprecated rate options to accept, among "--pe-rate" and "--ber".
    """
    g = p.add_argument_group(title)
    rate_text = "faulty PEs / all PEs (pe_rate, clustered) or stuck bits / all register bits (ber)" \
        if "ber" in models else "faulty PEs / all PEs"
    if rate == "one":
        g.add_argument("--rate", type=probability, metavar="R",
                       help=f"fault rate of a random map, in [0, 1]: {rate_text} (default: no random map)")
    elif rate == "list":
        g.add_argument("--rates", type=rate_list, metavar="LIST",
                       help=rates_help or f"fault rates, comma-separated, each in [0, 1]: {rate_text}")
    if len(models) > 1:
        descr = {"pe_rate": "pe_rate: exactly round(rate x PEs) faulty PEs, uniformly placed",
                 "ber": "ber: round(rate x all register bits) stuck bits",
                 "clustered": "clustered: faulty PEs in Gaussian blobs at a PE rate"}
        g.add_argument("--fault-model", choices=tuple(models), default=None,
                       help="; ".join(descr[m] for m in models) + " (default pe_rate)")
    if extras:
        g.add_argument("--bernoulli", action="store_true",
                       help="each PE (bit) faulty independently with the rate as probability, instead of exactly "
                            "round(rate x total) faulty PEs (bits) (default: exact)")
        g.add_argument("--faults-per-pe", type=positive_int, default=1, metavar="K",
                       help="stuck bits per faulty PE, pe_rate and clustered models (default 1)")
        g.add_argument("--clusters", type=positive_int, default=3, metavar="N",
                       help="number of blobs of the clustered model (default 3)")
    g.add_argument("--register", type=register_list, default="psum", metavar="REGS",
                   help="registers that get stuck bits: weight, act, psum or a list such as weight,act (default psum)")
    g.add_argument("--bits", type=bit_list, default=bits_default, metavar="BITS",
                   help="allowed bit positions, e.g. 24-31 or 0,5,7 (default "
                        + (bits_default if bits_default else "every bit of the register") + ")")
    g.add_argument("--value", choices=VALUES, default="random",
                   help=f"stuck value: 0, 1, or random ({value_help}) (default random)")
    p.set_defaults(fault_model_alias=None)
    for alias in aliases:
        if alias == "--pe-rate":
            model_use = "--rate X (the default --fault-model pe_rate, or clustered)"
            dest = "rate" if rate == "one" else "rates"
            add_deprecated_alias(g, "--pe-rate", dest, model_use, type=probability, metavar="X",
                                 convert=None if rate == "one" else (lambda v: [v]),
                                 implies={"fault_model_alias": ("--pe-rate", PE_RATE_MODELS)})
        elif alias == "--ber":
            add_deprecated_alias(g, "--ber", "rate", "--fault-model ber --rate X", type=probability, metavar="X",
                                 implies={"fault_model_alias": ("--ber", ("ber",))})
        else:
            raise ValueError(f"Unknown rate alias {alias!r}.")
    return g


def fault_model_of(args: argparse.Namespace) -> str:
    """``--fault-model`` (default pe_rate), reconciled with a deprecated rate option that implies one."""
    chosen = getattr(args, "fault_model", None)
    implied = getattr(args, "fault_model_alias", None)
    if implied is not None:
        option, models = implied
        if chosen is not None and chosen not in models:
            raise ValueError(f"{option} is a rate of the {' or '.join(models)} model but --fault-model is {chosen}; "
                             f"give --fault-model {models[0]} --rate X, or --fault-model {chosen} --rate X.")
        return chosen or models[0]
    return chosen or "pe_rate"


def fault_choices(args: argparse.Namespace) -> tuple[tuple[str, ...], list[int] | None, tuple[int, ...]]:
    """``(registers, bits, values)`` of ``--register``, ``--bits`` and ``--value``."""
    registers = args.register if isinstance(args.register, tuple) else parse_registers(args.register)
    return registers, args.bits, parse_values(args.value)


def random_fault_settings(args: argparse.Namespace) -> tuple[str, dict]:
    """``(method, settings)``: the :mod:`sysarray.faultgen` generator and its keyword arguments
    (registers, bits, values, exact, faults_per_pe, n_clusters) from the parsed options. The same
    for every command, so the same options and seed draw the same maps everywhere."""
    method = fault_model_of(args)
    registers, bits, values = fault_choices(args)
    settings: dict = {"registers": registers, "bits": bits, "values": values,
                      "exact": not getattr(args, "bernoulli", False)}
    if method != "ber":
        settings["faults_per_pe"] = getattr(args, "faults_per_pe", 1)
    if method == "clustered":
        settings["n_clusters"] = getattr(args, "clusters", 3)
    return method, settings


def rate_keyword(method: str) -> str:
    """The generator's keyword for the rate: ``ber`` for the BER model, ``pe_rate`` otherwise."""
    return "ber" if method == "ber" else "pe_rate"


def _smallest_rate(total: int) -> float:
    """The smallest three-digit rate r with round(r x total) >= 1 (round half to even: r > 0.5 / total)."""
    x = 0.5 / total
    step = 10.0 ** (math.floor(math.log10(x)) - 2)
    k = math.ceil(x / step)
    while True:
        r = float(f"{k * step:.3g}")
        if round(r * total) >= 1:
            return r
        k += 1


def check_rates_place_faults(rates: Iterable[float], method: str, exact: bool, rows: int, cols: int, psum_bits: int,
                             option: str) -> None:
    """A ValueError for a rate above 0 that places no faulty PE (stuck bit) on a rows x cols array.

    Exact maps have round(rate x total) faulty PEs (bits): below half of one there is none, and
    the chips would silently be fault-free. Rate 0 is the fault-free point and stays allowed;
    Bernoulli maps place faults at any positive rate.
    """
    if not exact:
        return
    if method == "ber":
        total, unit = rows * cols * (16 + psum_bits), f"register bits ({rows}x{cols} PEs x {16 + psum_bits} bits)"
        what = "stuck bit"
    else:
        total, unit, what = rows * cols, "PEs", "faulty PE"
    for r in rates:
        if r > 0 and round(r * total) < 1:
            raise ValueError(f"{option} {r:g} places no {what} on a {rows}x{cols} array ({r:g} x {total} {unit} "
                             f"rounds to 0). The smallest rate that places one is {_smallest_rate(total):g}; "
                             f"rate 0 stays allowed as the fault-free point.")


def draw_random_map(args: argparse.Namespace, cfg: ArrayConfig) -> FaultMap:
    """The random map of ``--rate`` and the fault options: chip 0 of the population that
    ``sysarray faults generate`` writes and ``sysarray campaign`` draws with the same options and
    ``--seed`` (seed ``SeedSequence(seed).spawn(n)[0]``)."""
    from sysarray import faultgen

    method, settings = random_fault_settings(args)
    check_rates_place_faults([args.rate], method, settings["exact"], cfg.rows, cfg.cols, cfg.psum_bits, "--rate")
    return faultgen.population(1, cfg, seed=args.seed, method=method, **{rate_keyword(method): args.rate},
                               **settings)[0]


# ------------------------------------------------------------------------------ one chip
def add_chip_arguments(p: argparse.ArgumentParser) -> None:
    """The chip of ``sysarray run``: array, a fault-map file or a random map."""
    g = p.add_argument_group("chip")
    add_array_arguments(g, from_file=True, bypass="faulty PEs are bypassed: the fault-aware-pruning hardware "
                                                  "(default: faulty PEs compute)")
    add_engine_argument(g)
    add_faults_file_argument(g, required=False,
                             help="the chip's fault-map file (`sysarray faults generate`); it sets the array size "
                                  "(default: a random map with --rate, else a fault-free chip)")
    add_random_fault_arguments(p, rate="one", title="random fault map (instead of --faults)",
                               aliases=("--pe-rate", "--ber"))


def load_chip_file(args: argparse.Namespace, option: str = "--faults") -> tuple[ArrayConfig, FaultMap]:
    """The array and map of a ``--faults`` file: its size is the array's, and an explicit
    ``--array`` must agree with it."""
    from sysarray.faultio import load_with_meta

    fm, _ = load_with_meta(args.faults)
    size = f"{fm.rows}x{fm.cols}"
    if args.array is not None and args.array != size:
        raise ValueError(f"--array {args.array} does not match the fault-map file '{args.faults}', which is for a "
                         f"{size} array; leave out --array (the file sets the size) or give --array {size}.")
    cfg = array_config(args, size=size)
    if fm.max_bit("psum") >= cfg.psum_bits:
        fm = FaultMap.load(args.faults, rows=fm.rows, cols=fm.cols, psum_bits=cfg.psum_bits)  # its message names the file
    return cfg, fm


def chip_from_args(args: argparse.Namespace) -> tuple[ArrayConfig, FaultMap | None]:
    """The chip of ``--faults FILE`` (its size), a random map (``--rate``) or a fault-free chip."""
    if args.faults and args.rate is not None:
        raise ValueError("Give either --faults FILE or --rate R for a random map, not both.")
    if args.faults:
        return load_chip_file(args)
    cfg = array_config(args)
    if args.rate is None:
        if getattr(args, "fault_model", None) is not None:
            raise ValueError(f"--fault-model {args.fault_model} draws a random map at --rate R; give --rate.")
        return cfg, None
    return cfg, draw_random_map(args, cfg)


__all__ = [
    "DEFAULT_ARRAY", "FAULT_MODELS", "VALUES", "add_array_arguments", "add_chip_arguments", "add_data_arguments",
    "add_deprecated_alias", "add_device_argument", "add_engine_argument", "add_faults_dir_argument",
    "add_faults_file_argument", "add_json_argument", "add_limit_argument", "add_model_argument", "add_out_argument",
    "add_quiet_argument", "add_random_fault_arguments", "add_seed_argument", "array_config", "array_size", "bit_list",
    "require",
    "check_output", "check_rates_place_faults", "chip_from_args", "draw_random_map", "fault_choices", "fault_model_of",
    "float_within", "int_at_least", "int_within", "load_chip_file", "non_negative_float", "non_negative_int",
    "number_list", "open_probability", "output_dir", "output_file", "parse_bits", "parse_registers", "parse_values",
    "positive_float", "positive_int", "probability", "random_fault_settings", "rate_keyword", "rate_list",
    "register_list", "resolve_device", "warn", "write_json",
]
