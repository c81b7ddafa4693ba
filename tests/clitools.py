"""Running the ``sysarray`` command in-process from tests."""
from __future__ import annotations

from sysarray.cli import main


def run_cli(args, capsys) -> tuple[int, str, str]:
    """``(exit code, stdout, stderr)`` of ``sysarray ARGS`` (arguments converted to strings)."""
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err
