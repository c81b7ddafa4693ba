"""How `sysarray` ends when a command cannot finish: an interrupt (Ctrl-C or SIGTERM) is one line
and exit code 130, running out of memory one `error:` line and exit code 2, a closed stdout
(`sysarray ... | head -1`) a quiet exit with code 141; never a traceback."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sysarray import cli, lifecycle
from sysarray.cli import main

REPO = Path(__file__).resolve().parent.parent


def _compiled_interrupt() -> SystemError:
    """What a KeyboardInterrupt raised while a compiled function (a numba kernel) returns becomes."""
    exc = SystemError("CPUDispatcher(<function kernel>) returned a result with an exception set")
    exc.__cause__ = KeyboardInterrupt()
    return exc


@pytest.fixture
def boom(monkeypatch):
    """A subcommand ``boom KIND`` that raises what ``KIND`` names (registered for one test)."""
    raised = {
        "numpy-memory": lambda: MemoryError("Unable to allocate 74.5 GiB for an array with shape (100000, 100000) "
                                            "and data type int64"),
        "bare-memory": MemoryError,
        "torch-memory": lambda: RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not "
                                             "enough memory: you tried to allocate 80000000000 bytes."),
        "runtime": lambda: RuntimeError("a bug"),
        "interrupt": KeyboardInterrupt,
        "interrupted": lambda: lifecycle.Interrupted("interrupted at 7/9 chips; rerun the same command to resume"),
        "pipe": lambda: BrokenPipeError(32, "Broken pipe"),
        "compiled-interrupt": _compiled_interrupt,
        "system": lambda: SystemError("a bug"),
    }

    def run(args):
        if args.kind == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises at once
            return 0
        raise raised[args.kind]()

    def add(subparsers):
        p = subparsers.add_parser("boom")
        p.add_argument("kind")
        p.set_defaults(func=run)

    cli.build_parser()  # the plugins register their subcommands in the real list first
    monkeypatch.setattr(cli, "_SUBCOMMANDS", [*cli._SUBCOMMANDS, add])


def run_cli(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("kind,detail", [
    ("numpy-memory", "Unable to allocate 74.5 GiB for an array with shape (100000, 100000) and data type int64"),
    ("bare-memory", "an allocation failed"),
    ("torch-memory", "DefaultCPUAllocator: not enough memory: you tried to allocate 80000000000 bytes."),
])
def test_out_of_memory_is_one_error_line_with_a_hint(boom, capsys, kind, detail):
    code, out, err = run_cli(["boom", kind], capsys)
    assert code == 2 and out == ""
    assert err.startswith("sysarray: error: out of memory: ") and detail in err
    assert "smaller array" in err and err.count("\n") == 1


def test_other_runtime_errors_still_raise(boom, capsys):
    with pytest.raises(RuntimeError, match="a bug"):
        main(["boom", "runtime"])


def test_an_interrupt_is_one_line_and_exit_code_130(boom, capsys):
    assert run_cli(["boom", "interrupt"], capsys) == (
        130, "", "sysarray: interrupted before it finished; rerun the command to start over\n")
    assert run_cli(["boom", "interrupted"], capsys) == (
        130, "", "sysarray: interrupted at 7/9 chips; rerun the same command to resume\n")


def test_an_interrupt_out_of_code_run_from_a_string_still_exits_130(tmp_path):
    # CPython's `-m` start-up would re-raise such an interrupt as a death by SIGINT, caught or not
    (tmp_path / "boom_main.py").write_text(
        "import sys\n"
        "from sysarray import cli\n"
        "def add(subparsers):\n"
        "    subparsers.add_parser('boom').set_defaults(func=lambda args: exec('raise KeyboardInterrupt'))\n"
        "cli.build_parser()\n"
        "cli._SUBCOMMANDS.append(add)\n"
        "sys.exit(cli.main(['boom']))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "boom_main"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert (done.returncode, done.stderr) == (
        130, "sysarray: interrupted before it finished; rerun the command to start over\n")


@pytest.mark.skipif(signal.getsignal(signal.SIGTERM) != signal.SIG_DFL, reason="SIGTERM has a handler here")
def test_sigterm_is_an_interrupt_and_its_handler_is_restored(boom, capsys):
    assert run_cli(["boom", "sigterm"], capsys)[::2] == (
        130, "sysarray: interrupted before it finished; rerun the command to start over\n")
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_a_broken_pipe_elsewhere_is_an_error_line(boom, capsys):
    code, out, err = run_cli(["boom", "pipe"], capsys)
    assert code == 2 and err == "sysarray: error: Broken pipe\n"


@pytest.mark.skipif(not hasattr(os, "pipe") or sys.platform == "win32", reason="POSIX pipes")
@pytest.mark.parametrize("args,codes", [(["faults", "show", "CHIP"], {141}),
                                        (["--help"], {0, 141})])  # argparse itself ignores a failed write
def test_a_closed_stdout_ends_quietly(tmp_path, args, codes):
    import sysarray as sa

    chip = tmp_path / "chip.npz"
    sa.FaultMap(4, 4).add(0, 0, "psum", 31, 1).add(2, 3, "weight", 7, 0).save(str(chip))
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line, as `| head -1` is after its line
    try:
        done = subprocess.run([sys.executable, "-m", "sysarray", *[str(chip) if a == "CHIP" else a for a in args]],
                              cwd=REPO, stdout=write_end, stderr=subprocess.PIPE, timeout=120)
    finally:
        os.close(write_end)
    assert done.stderr.decode() == "" and done.returncode in codes



def test_an_interrupt_inside_a_compiled_call_is_one_line_and_exit_code_130(boom, capsys):
    code, out, err = run_cli(["boom", "compiled-interrupt"], capsys)
    assert code == 130 and out == "" and err.count("\n") == 1 and err.startswith("sysarray: interrupted")
    with pytest.raises(SystemError, match="a bug"):
        main(["boom", "system"])
