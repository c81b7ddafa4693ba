"""The main demo (``make demo``): fault-free, faulty, bypassed (FAP) and retrained (FAP+T) chips."""
from __future__ import annotations

import subprocess
import sys

from mitigation.demo import run_demo


def test_demo_table_shows_the_faults_and_both_mitigations(tmp_path, capsys):
    rows = run_demo(path=str(tmp_path / "lenet5-digits.pt"), rates=(0.05,), seed=0)
    by_mode = {r["mode"]: r for r in rows}
    assert set(by_mode) == {"-", "as is", "bypass (pruned)", "bypass + retrained"}
    clean = by_mode["-"]["accuracy"]
    assert clean > 0.93
    assert by_mode["as is"]["accuracy"] < 0.5  # psum bits 24-31 stuck at 1 wreck the network
    assert by_mode["bypass (pruned)"]["accuracy"] > by_mode["as is"]["accuracy"] + 0.3
    assert by_mode["bypass + retrained"]["accuracy"] >= by_mode["bypass (pruned)"]["accuracy"]
    assert by_mode["bypass + retrained"]["accuracy"] > clean - 0.05
    assert len({r["cycles"] for r in rows}) == 1  # faults and bypass change values, never timing
    out = capsys.readouterr().out
    assert "fault-free" in out and "bypass + retrained" in out


def test_demo_is_a_sysarray_command():
    out = subprocess.run([sys.executable, "-m", "sysarray", "demo", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "FAP+T" in out.stdout
