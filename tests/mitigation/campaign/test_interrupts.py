"""A `sysarray campaign` process that is killed or interrupted leaves no process behind: SIGKILL of
the campaign process ends its fork server, workers and resource tracker within seconds; Ctrl-C
stops them, keeps every finished chip, prints one line, exits 130, and a rerun resumes to the
rows of an uninterrupted run."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sysarray.cli import main
from tests.clitools import trained_mlp

REPO = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="lists processes through /proc")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return trained_mlp(tmp_path_factory.mktemp("interrupts"), epochs=1)


def campaign_args(model, out, chips_per_rate):
    return ["campaign", "--model", model, "--limit", "100", "--array", "8x8", "--rates", "0.02,0.05,0.1",
            "--chips-per-rate", str(chips_per_rate), "--register", "psum", "--bits", "16-31", "--value", "1",
            "--seed", "3", "--quiet", "--workers", "2", "-o", str(out)]


def stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after "pid (comm)": state, ppid, pgrp, session, ... (``proc(5)``, from field 3)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def session_processes(sid: int) -> dict[int, str]:
    """``{pid: command line}`` of the live (not zombie) processes of session ``sid``."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = stat_fields(int(entry))
            if int(fields[3]) != sid or fields[0] == "Z":
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                found[int(entry)] = f.read().replace(b"\0", b" ").decode(errors="replace")[:160]
        except (OSError, IndexError, ValueError):  # gone meanwhile
            continue
    return found


def worker_cpu_seconds(campaign: int) -> float:
    """CPU seconds used so far by the campaign's busiest pool worker (a process of its session that
    is neither the campaign process nor a child of it), 0 when it has none."""
    best = 0.0
    for pid in session_processes(campaign):
        try:
            fields = stat_fields(pid)
            if pid != campaign and int(fields[1]) != campaign:
                best = max(best, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
        except (OSError, IndexError, ValueError):
            continue
    return best


def start_campaign(args) -> subprocess.Popen:
    """``python -m sysarray ARGS`` in a session of its own, SIGINT at its default whatever this
    process inherited (a background job's is ignored): a shell's exec into the command."""
    code = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
            "os.execv(sys.executable, [sys.executable, '-m', 'sysarray', *sys.argv[1:]])")
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)


def wait_for_busy_worker(proc: subprocess.Popen, journal: Path, lines: int) -> None:
    """Until the campaign has written ``lines`` chips and its pool worker, past its start-up, has
    run chips for a while (one that is still starting exits when its parent dies anyway)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        # the journal first: reading /proc is the dearer check, on the campaign's cores
        if journal.exists() and journal.read_bytes().count(b"\n") >= lines and worker_cpu_seconds(proc.pid) > 0.5:
            return
        time.sleep(0.05)
    raise AssertionError(f"the campaign ended or never started its workers (exit code {proc.poll()})")


def wait_for_none_left(sid: int, seconds: float) -> dict[int, str]:
    deadline = time.monotonic() + seconds
    while (left := session_processes(sid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def kill_session(sid: int) -> None:
    try:
        os.killpg(sid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_a_sigkilled_campaign_leaves_no_process_behind(checkpoint, tmp_path):
    out = tmp_path / "camp"
    proc = start_campaign(campaign_args(checkpoint, out, 2000))
    try:
        wait_for_busy_worker(proc, out / "chips.jsonl", 5)
        started = session_processes(proc.pid)
        assert any("forkserver" in cmd for cmd in started.values()), started
        os.kill(proc.pid, signal.SIGKILL)  # the campaign process alone, as `kill -9` does
        proc.wait()
        left = wait_for_none_left(proc.pid, 5.0)
        assert not left, f"still running 5 s after the campaign process was killed: {left}"
    finally:
        kill_session(proc.pid)
        proc.communicate()


def test_ctrl_c_keeps_every_finished_chip_and_a_rerun_completes_it(checkpoint, tmp_path, capsys):
    from mitigation.campaign.store import JOURNAL, RESULTS, read_journal

    per_rate = 1000  # more than this process alone evaluates while its worker starts (the fork server warms up)
    total, ref, out = 3 * per_rate, tmp_path / "ref", tmp_path / "camp"
    proc = start_campaign(campaign_args(checkpoint, out, per_rate))
    try:
        wait_for_busy_worker(proc, out / JOURNAL, 20)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: every process of the terminal's process group
        _, err = proc.communicate(timeout=60)
        left = wait_for_none_left(proc.pid, 5.0)
    finally:
        kill_session(proc.pid)
    err = err.decode()
    match = re.fullmatch(r"sysarray: interrupted at (\d+)/(\d+) chips; rerun the same command to resume\n", err)
    assert proc.returncode == 130 and match, (proc.returncode, err)
    assert not left, f"still running 5 s after the interrupt: {left}"
    done, _ = read_journal(str(out / JOURNAL))
    assert int(match[2]) == total and 20 <= int(match[1]) == len(done) < total
    assert (out / RESULTS).read_text().count("\n") == len(done) + 1  # written out before it stopped

    assert main(campaign_args(checkpoint, ref, per_rate)) == 0  # uninterrupted (it warms this process's fork server)
    capsys.readouterr()
    assert main(campaign_args(checkpoint, out, per_rate)) == 0
    assert f"({len(done)} were already done)" in capsys.readouterr().out
    assert (out / RESULTS).read_bytes() == (ref / RESULTS).read_bytes()
    assert len((out / JOURNAL).read_bytes().splitlines()) == total  # no chip written twice
