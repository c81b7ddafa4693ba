"""Running the ``sysarray`` command in-process from tests."""
from __future__ import annotations

import argparse

from sysarray.cli import main


def run_cli(args, capsys) -> tuple[int, str, str]:
    """``(exit code, stdout, stderr)`` of ``sysarray ARGS`` (arguments converted to strings)."""
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def trained_mlp(directory, epochs: int = 3) -> str:
    """Path of a small MLP checkpoint trained on digits by ``sysarray train`` in ``directory``."""
    path = f"{directory}/mlp.pt"
    assert main(["train", "--arch", "mlp", "--dataset", "digits", "--epochs", str(epochs), "--seed", "0",
                 "--quiet", "-o", path]) == 0
    return path


def leaf_parsers(parser: argparse.ArgumentParser, prefix: str = ""):
    """``(name, parser)`` of every command a user runs, nested ones as ``"faults generate"``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                full = f"{prefix}{name}"
                nested = list(leaf_parsers(sub, full + " "))
                yield from nested or [(full, sub)]


def visible_options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The optional actions a user types (not --help, not hidden deprecated aliases)."""
    return [a for a in parser._actions if a.option_strings and a.help is not argparse.SUPPRESS
            and not isinstance(a, argparse._HelpAction)]
