"""Command-line arguments shared by the commands that need a chip (array + fault map)."""
from __future__ import annotations

import argparse

from sysarray.atomic import write_json
from sysarray.config import ArrayConfig, parse_array
from sysarray.faults import FaultMap, as_register


def parse_bits(text: str) -> list[int]:
    """``"24-31"``, ``"0,5,7"`` or ``"0-3,31"`` -> sorted bit positions."""
    bits: set[int] = set()
    for part in str(text).split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-"))
                if lo > hi:
                    raise ValueError
                bits.update(range(lo, hi + 1))
            else:
                bits.add(int(part))
        except ValueError:
            raise ValueError(f"Bits must look like 24-31 or 0,5,7. Got {text!r} instead.") from None
    return sorted(bits)


def parse_registers(text: str) -> tuple[str, ...]:
    return tuple(as_register(r.strip(), "--register").value for r in str(text).split(","))


def parse_values(text: str) -> tuple[int, ...]:
    table = {"0": (0,), "1": (1,), "random": (0, 1), "0,1": (0, 1)}
    if text not in table:
        raise ValueError(f"--value must be 0, 1 or random. Got {text!r} instead.")
    return table[text]


def add_chip_arguments(p: argparse.ArgumentParser) -> None:
    """--array, --dataflow, --psum-bits, --bypass and the fault-map options."""
    p.add_argument("--array", default="16x16", metavar="RxC", help="array rows x columns (default 16x16)")
    p.add_argument("--dataflow", choices=("ws", "os", "is"), default="ws", help="default ws")
    p.add_argument("--psum-bits", type=int, default=32, help="partial-sum register width, 17..32 (default 32)")
    p.add_argument("--bypass", action="store_true", help="faulty PEs are bypassed (fault-aware pruning hardware)")
    g = p.add_argument_group("faults (a file, or a random map)")
    g.add_argument("--faults", metavar="CHIP.npz", help="fault-map file (sysarray faults generate)")
    g.add_argument("--pe-rate", type=float, help="share of faulty PEs for a random map, in [0, 1]")
    g.add_argument("--register", default="psum", help="registers of random faults: weight, act, psum or a list (default psum)")
    g.add_argument("--bits", help="bits of random faults, e.g. 24-31 (default: every bit of the register)")
    g.add_argument("--value", default="random", help="stuck value of random faults: 0, 1 or random (default)")
    g.add_argument("--seed", type=int, default=0, help="seed of the random map (default 0)")


def chip_from_args(args: argparse.Namespace) -> tuple[ArrayConfig, FaultMap | None]:
    rows, cols = parse_array(args.array)
    cfg = ArrayConfig(rows, cols, args.dataflow, psum_bits=args.psum_bits, bypass=args.bypass)
    if args.faults and args.pe_rate is not None:
        raise ValueError("Give either --faults FILE or --pe-rate for a random map, not both.")
    if args.faults:
        return cfg, FaultMap.load(args.faults, rows=rows, cols=cols, psum_bits=cfg.psum_bits)
    if args.pe_rate is None:
        return cfg, None
    registers = parse_registers(args.register)
    bits = parse_bits(args.bits) if args.bits else None
    fm = FaultMap.random(cfg, pe_rate=args.pe_rate, registers=registers, bits=bits,
                         values=parse_values(args.value), seed=args.seed)
    return cfg, fm


__all__ = ["add_chip_arguments", "chip_from_args", "parse_bits", "parse_registers", "parse_values", "write_json"]
