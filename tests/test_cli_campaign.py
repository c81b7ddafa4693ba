"""`sysarray campaign`, `sweep`, `importance` and `report` end to end: a SIGKILLed campaign resumes to
exactly the rows of an uninterrupted run; reruns do nothing; changed flags and bad input are one
line and exit 2."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.clitools import run_cli, trained_mlp

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def mlp_checkpoint(tmp_path_factory):
    return trained_mlp(tmp_path_factory.mktemp("cli"))


def campaign_args(model, out, *extra):
    return ["campaign", "--model", model, "--limit", "100", "--array", "8x8", "--rates", "0.02,0.05,0.1",
            "--chips-per-rate", "40", "--register", "psum", "--bits", "16-31", "--value", "1", "--seed", "3",
            "--quiet", "-o", str(out), *extra]


def test_sigkilled_campaign_resumes_to_the_uninterrupted_rows(mlp_checkpoint, tmp_path, capsys):
    from mitigation.campaign.store import JOURNAL, RESULTS, read_journal

    ref, out = tmp_path / "ref", tmp_path / "killed"
    code, _, err = run_cli(campaign_args(mlp_checkpoint, ref, "--workers", "1"), capsys)
    assert code == 0, err
    total = 120
    proc = subprocess.Popen([sys.executable, "-m", "sysarray", *campaign_args(mlp_checkpoint, out, "--workers", "2")],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    journal = out / JOURNAL
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if journal.exists() and journal.read_bytes().count(b"\n") >= 10:
                break
            time.sleep(0.005)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the campaign, its fork server and its workers
        proc.wait()
    done, _ = read_journal(str(journal))
    assert 10 <= len(done) < total, "the campaign must be killed partway"
    code, out_text, err = run_cli(campaign_args(mlp_checkpoint, out, "--workers", "2"), capsys)
    assert code == 0, err
    assert f"({len(done)} were already done)" in out_text
    assert (out / RESULTS).read_bytes() == (ref / RESULTS).read_bytes()
    lines = journal.read_bytes().splitlines()
    records, _ = read_journal(str(journal))
    assert len(lines) == total and sorted(records) == list(range(total))  # none lost, none duplicated

    # the finished campaign again: nothing to do, nothing written
    before = journal.read_bytes()
    code, out_text, err = run_cli(campaign_args(mlp_checkpoint, out, "--workers", "2"), capsys)
    assert code == 0 and "nothing to do" in out_text and journal.read_bytes() == before

    # a changed flag in the same directory is refused with one line naming it
    code, out_text, err = run_cli(campaign_args(mlp_checkpoint, out, "--workers", "2", "--critical-drop", "0.1"), capsys)
    assert code == 2 and err.count("\n") == 1
    assert "different configuration" in err and "critical_drop (0.05 -> 0.1)" in err

    # the report of the finished campaign
    code, out_text, err = run_cli(["report", out], capsys)
    assert code == 0, err
    md = (out / "report.md").read_text()
    assert "![accuracy versus fault rate](accuracy_vs_rate.png)" in md and "| psum:16-31:1 | 0.05 | 40 |" in md
    assert (out / "accuracy_vs_rate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_faults_dir_campaign_and_margin(mlp_checkpoint, tmp_path, capsys):
    chips = tmp_path / "chips"
    assert run_cli(["faults", "generate", "--array", "8x8", "--rate", "0.05", "--register", "psum", "--bits",
                    "20-31", "--value", "1", "--chips", "3", "--seed", "1", "-o", chips], capsys)[0] == 0
    code, out, err = run_cli(["campaign", "--model", mlp_checkpoint, "--limit", "50", "--array", "8x8", "--faults-dir",
                              chips, "--workers", "1", "--quiet", "-o", tmp_path / "c"], capsys)
    assert code == 0, err
    rows = (tmp_path / "c" / "results.csv").read_text().splitlines()
    assert rows[0].startswith("chip,file,group,rate,") and len(rows) == 4
    assert rows[1].startswith("0,chip-0000.npz,psum:20-31:1,0.05,")
    # --margin picks the chips per rate with Leveugle's formula: 0.2 at 95% -> ceil(1.96^2 / 4 / 0.04) = 25
    code, out, err = run_cli(["campaign", "--model", mlp_checkpoint, "--limit", "20", "--array", "8x8", "--rates", "0.02",
                              "--margin", "0.2", "--workers", "1", "--quiet", "-o", tmp_path / "m"], capsys)
    assert code == 0, err
    assert len((tmp_path / "m" / "results.csv").read_text().splitlines()) == 1 + 25


def test_sweep_and_importance_commands_and_their_reports(mlp_checkpoint, tmp_path, capsys):
    code, out, err = run_cli(["sweep", "--model", mlp_checkpoint, "--limit", "40", "--array", "4x4", "--register", "psum",
                              "--bits", "0,30", "--value", "1", "--workers", "1", "--quiet", "-o", tmp_path / "s"], capsys)
    assert code == 0, err
    assert len((tmp_path / "s" / "results.csv").read_text().splitlines()) == 1 + 2 * 16
    assert run_cli(["report", tmp_path / "s"], capsys)[0] == 0
    md = (tmp_path / "s" / "report.md").read_text()
    assert "![heatmap](heatmap.png)" in md and "![bit sensitivity](bit_sensitivity.png)" in md
    code, out, err = run_cli(["importance", "--model", mlp_checkpoint, "--limit", "40", "--array", "4x4", "--register",
                              "psum", "--bits", "10-31", "--value", "1", "--draws", "12", "--workers", "1", "--quiet",
                              "-o", tmp_path / "i"], capsys)
    assert code == 0, err
    assert "importance precision" in out and "uniform    precision" in out
    assert run_cli(["report", tmp_path / "i"], capsys)[0] == 0
    assert "## Importance sampling" in (tmp_path / "i" / "report.md").read_text()


@pytest.mark.parametrize("extra, message", [
    (["--rates", "0.1", "--register", "psun"], "must be one of weight, act, psum. Got 'psun'"),
    (["--rates", "0.1", "--register", "weight", "--bits", "0-8"], "within 0..7 for register 'weight'. Got 8"),
    (["--rates", "0.1", "--psum-bits", "20", "--bits", "0-25"], "within 0..19 for register 'psum'. Got 20"),
    (["--rates", "0,1.5"], "argument --rates: must be comma-separated distinct numbers within [0, 1], e.g. "
                           "0,0.01,0.02. Got '0,1.5' instead"),
    (["--rates", "-0.01"], "argument --rates: must be comma-separated distinct numbers within [0, 1]"),
    (["--rates", "a,b"], "argument --rates: must be comma-separated"),
    (["--rates", "0.1,0.1"], "argument --rates: must be comma-separated distinct numbers"),
    ([], "needs --rates"),
    (["--rates", "0.1", "--chips-per-rate", "2", "--margin", "0.1"], "either --chips-per-rate or --margin"),
    (["--faults-dir", "/nonexistent/chips"], "does not exist"),
    (["--rates", "0.1", "--workers", "0"], "argument --workers: must be a positive integer. Got '0' instead"),
    (["--rates", "0.1", "--margin", "0.1", "--confidence", "1"], "argument --confidence: must be a number within "
                                                                 "(0, 1). Got '1' instead"),
    (["--rates", "0.1", "--margin", "0"], "argument --margin: must be a number within (0, 1). Got '0' instead"),
    (["--rates", "0.1", "--critical-drop", "2"], "argument --critical-drop: must be a number within [0, 1]"),
    (["--rates", "0.1", "--seed", "-1"], "argument --seed: must be a non-negative integer. Got '-1' instead"),
    (["--rates", "0.1", "--chips-per-rate", "0"], "argument --chips-per-rate: must be a positive integer"),
    (["--rates", "0.1", "--group", "bogus"], "argument --group: The register given to --group must be one of weight, "
                                             "act, psum. Got 'bogus' instead"),
    (["--rates", "0,0.001,0.01"], "--rates 0.001 places no faulty PE on a 16x16 array (0.001 x 256 PEs rounds to 0). "
                                  "The smallest rate that places one is 0.00196; rate 0 stays allowed"),
    (["--rates", "0.001", "--fault-model", "ber", "--array", "2x2"], "--rates 0.001 places no stuck bit on a 2x2 array"),
    (["--rates", "0.1", "--device", "cuda", "--workers", "2"], "--device cuda runs every chip in this process on the "
                                                               "GPU; leave out --workers and --scheduler."),
    (["--rates", "0.1", "--device", "cuda", "--engine", "cycle"], "--engine cycle runs on the CPU; --device cuda needs "
                                                                  "--engine fast."),
])
def test_campaign_bad_input_is_one_line_exit_2(extra, message, tmp_path, capsys):
    code, out, err = run_cli(["campaign", "--model", "unused.pt", "-o", tmp_path / "x", "--quiet", *extra], capsys)
    assert code == 2
    assert err.count("\n") == 1 and message in err, err


def test_report_of_a_directory_that_is_not_a_campaign(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    for target, message in ((tmp_path, "is not a campaign directory: it has no manifest.json"),
                            (tmp_path / "missing", "is not a campaign directory"),
                            (tmp_path / "notes.txt", "is not a campaign directory")):
        code, _, err = run_cli(["report", target], capsys)
        assert code == 2 and err.count("\n") == 1 and message in err, err


def test_campaign_refuses_a_non_empty_directory_that_is_not_a_campaign(mlp_checkpoint, tmp_path, capsys):
    (tmp_path / "precious.txt").write_text("keep me")
    code, _, err = run_cli(["campaign", "--model", mlp_checkpoint, "--rates", "0.1", "--array", "4x4", "--quiet",
                            "-o", tmp_path], capsys)
    assert code == 2 and "is not empty and is not a campaign directory" in err
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_bits_default_to_the_psum_width(mlp_checkpoint, tmp_path, capsys):
    code, _, err = run_cli(["campaign", "--model", mlp_checkpoint, "--limit", "10", "--array", "4x4", "--psum-bits", "20",
                            "--rates", "0.5", "--chips-per-rate", "2", "--workers", "1", "--quiet", "-o", tmp_path / "c"],
                           capsys)
    assert code == 0, err  # a psum fault on bits 20..31 would be refused by the 20-bit chip
    assert "psum:all:random" in (tmp_path / "c" / "results.csv").read_text()
