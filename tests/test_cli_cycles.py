"""``sysarray cycles`` end to end: SCALE-Sim config + topology in, COMPUTE_REPORT.csv out."""
from __future__ import annotations

import subprocess
import sys

import pytest

from sysarray.cli import main

CFG = """[general]
run_name = alexnet_32x32_ws

[architecture_presets]
ArrayHeight:    32
ArrayWidth:     32
IfmapSramSzkB:   64
FilterSramSzkB:  64
OfmapSramSzkB:   64
IfmapOffset:    0
FilterOffset:   10000000
OfmapOffset:    20000000
Dataflow : ws

[run_presets]
InterfaceBandwidth: CALC
"""
CONV = (
    "Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter, Strides,\n"
    "Conv1,  224, 224,    11, 11,    3,      96,     4,\n"
)
GEMM = "Layer Name, M, N, K,\nTest 1, 256, 128, 256,\n"
HEADER = "LayerID, Total Cycles, Stall Cycles, Overall Util %, Mapping Efficiency %, Compute Util %,"


@pytest.fixture
def files(tmp_path):
    def make(cfg=CFG, topo=CONV, topo_name="topo.csv"):
        c = tmp_path / "arch.cfg"
        c.write_text(cfg)
        t = tmp_path / topo_name
        t.write_text(topo)
        return c, t

    return make


def test_alexnet_conv1_golden_row_end_to_end(files, tmp_path, capsys):
    cfg, topo = files()
    out = tmp_path / "out"
    assert main(["cycles", "-c", str(cfg), "-t", str(topo), "-o", str(out)]) == 0
    report = (out / "COMPUTE_REPORT.csv").read_text()
    assert report == HEADER + "\n0, 112283, 0, 91.68309650614964, 94.53125, 90.78000992063492,\n"
    printed = capsys.readouterr()
    assert "Conv1" in printed.out and "112283" in printed.out and "alexnet_32x32_ws" in printed.out
    assert printed.err == ""


@pytest.mark.parametrize(
    "flow, total, compute_util",
    [
        # folds x per fold - 1; compute util from SCALE-Sim v2's golden traces for this topology.
        ("ws", 8 * 4 * (2 * 32 + 32 + 256 - 2) - 1, "67.19160104986877"),
        ("os", 8 * 4 * (32 + 32 + 256 - 2) - 1, "80.50314465408806"),
        ("is", 8 * 8 * (2 * 32 + 32 + 128 - 2) - 1, "50.59288537549407"),
    ],
)
def test_gemm_topology_mode(files, tmp_path, flow, total, compute_util):
    cfg, topo = files(cfg=CFG.replace("Dataflow : ws", f"Dataflow : {flow}"), topo=GEMM)
    out = tmp_path / "gemm_out"
    assert main(["cycles", "-c", str(cfg), "-t", str(topo), "-i", "gemm", "-o", str(out)]) == 0
    lines = (out / "COMPUTE_REPORT.csv").read_text().splitlines()
    assert lines[0] == HEADER
    overall = (256 * 128 * 256 * 100) / (total * 32 * 32)
    assert lines[1] == f"0, {total}, 0, {overall}, 100.0, {compute_util},"
    assert len(lines) == 2


def test_long_options_and_output_dir_created(files, tmp_path):
    cfg, topo = files()
    out = tmp_path / "a" / "b"
    assert main(["cycles", "--config", str(cfg), "--topology", str(topo), "--input-type", "conv", "--out", str(out)]) == 0
    assert (out / "COMPUTE_REPORT.csv").exists()


def _error_line(capsys) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("sysarray")
    assert ": error: " in lines[0]
    return lines[0]


@pytest.mark.parametrize(
    "cfg_text, topo_text, kind, expected",
    [
        (CFG.replace("Dataflow : ws", "Dataflow : wx"), CONV, "conv", ["arch.cfg", "line 13", "'Dataflow'", "'wx'"]),
        (CFG.replace("ArrayWidth:     32\n", ""), CONV, "conv", ["arch.cfg", "'ArrayWidth'", "missing"]),
        (CFG, CONV.replace("224, 224,", "224, 22a4,"), "conv", ["topo.csv", "line 2", "'IFMAP Width'", "'22a4'"]),
        (CFG, CONV.replace("     4,", ""), "conv", ["topo.csv", "line 2", "8 fields", "Got 7"]),
        (CFG, CONV, "gemm", ["topo.csv", "line 2", "4 fields", "Got 8"]),
    ],
)
def test_bad_input_exits_2_with_one_line(files, tmp_path, capsys, cfg_text, topo_text, kind, expected):
    cfg, topo = files(cfg=cfg_text, topo=topo_text)
    out = tmp_path / "out"
    assert main(["cycles", "-c", str(cfg), "-t", str(topo), "-i", kind, "-o", str(out)]) == 2
    line = _error_line(capsys)
    assert line.startswith("sysarray: error: ")
    for part in expected:
        assert part in line
    assert not (out / "COMPUTE_REPORT.csv").exists()


@pytest.mark.parametrize("missing", ["config", "topology"])
def test_missing_file_exits_2(files, tmp_path, capsys, missing):
    cfg, topo = files()
    ghost = tmp_path / "ghost.file"
    args = ["cycles", "-c", str(ghost if missing == "config" else cfg), "-t", str(ghost if missing == "topology" else topo)]
    assert main(args + ["-o", str(tmp_path / "out")]) == 2
    line = _error_line(capsys)
    assert "No such file or directory" in line and "ghost.file" in line


def test_output_path_is_a_file_exits_2(files, tmp_path, capsys):
    cfg, topo = files()
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    assert main(["cycles", "-c", str(cfg), "-t", str(topo), "-o", str(blocker)]) == 2
    assert "blocker" in _error_line(capsys)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["cycles", "-c", "x.cfg", "-o", "out"], "required: -t/--topology"),
        (["cycles", "-c", "x.cfg", "-t", "t.csv", "-i", "fc", "-o", "out"], "invalid choice: 'fc'"),
        ([], "required: COMMAND"),
        (["nosuchcommand"], "invalid choice: 'nosuchcommand'"),
    ],
)
def test_usage_errors_exit_2_with_one_line(capsys, argv, expected):
    assert main(argv) == 2
    assert expected in _error_line(capsys)


@pytest.mark.parametrize("argv", [["--help"], ["cycles", "--help"]])
def test_help_exits_0(capsys, argv):
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "usage: sysarray" in out
    if argv[0] == "cycles":
        for flag in ("--config", "--topology", "--input-type", "--out", "COMPUTE_REPORT.csv"):
            assert flag in out


def test_python_dash_m_sysarray(files, tmp_path):
    cfg, topo = files()
    ok = subprocess.run(
        [sys.executable, "-m", "sysarray", "cycles", "-c", str(cfg), "-t", str(topo), "-o", str(tmp_path / "o")],
        capture_output=True, text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "o" / "COMPUTE_REPORT.csv").read_text().splitlines()[1].startswith("0, 112283, 0,")
    bad = subprocess.run(
        [sys.executable, "-m", "sysarray", "cycles", "-c", str(tmp_path / "none.cfg"), "-t", str(topo), "-o", "o"],
        capture_output=True, text=True,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [f"sysarray: error: No such file or directory: {tmp_path / 'none.cfg'}"]
