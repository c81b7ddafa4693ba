"""Running the ``sysarray`` command in-process from tests."""
from __future__ import annotations

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
