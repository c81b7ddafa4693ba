"""SCALE-Sim v2 config and topology readers and the COMPUTE_REPORT.csv writer."""
from __future__ import annotations

import pytest

from sysarray.config import ArrayConfig, Dataflow
from sysarray.scalesim import (
    COMPUTE_REPORT_HEADER,
    TopologyLayer,
    format_compute_row,
    read_config,
    read_topology,
    run_cycles,
    write_compute_report,
)
from sysarray.timing import gemm_timing

# SCALE-Sim v2's configs/scale.cfg, with its many keys we accept and ignore.
SCALE_CFG = """[general]
run_name = scale_example_run_32x32_ws

[architecture_presets]
ArrayHeight:    32
ArrayWidth:     32
IfmapSramSzkB:   64
FilterSramSzkB:  64
OfmapSramSzkB:   64
IfmapOffset:    0
FilterOffset:   10000000
OfmapOffset:    20000000
Bandwidth : 64
Dataflow : ws
MemoryBanks: 1

[sparsity]
SparsitySupport : false

[run_presets]
InterfaceBandwidth: CALC
"""

CONV_HEADER = "Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter, Strides,\n"
ALEXNET_PART = CONV_HEADER + "Conv1,  224, 224,    11, 11,    3,      96,     4,"


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


# ----------------------------------------------------------------------------------------- config


def test_read_config_scale_cfg(tmp_path):
    c = read_config(write(tmp_path, "scale.cfg", SCALE_CFG))
    assert c.run_name == "scale_example_run_32x32_ws"
    assert c.array == ArrayConfig(32, 32, Dataflow.WS)


def test_read_config_minimal_defaults_run_name_to_stem(tmp_path):
    text = "[architecture_presets]\narrayheight = 8\nArrayWidth: 16\nDataflow: OS\n"
    c = read_config(write(tmp_path, "tiny.cfg", text))
    assert c.run_name == "tiny"
    assert c.array == ArrayConfig(8, 16, "os")


@pytest.mark.parametrize(
    "text, match",
    [
        (SCALE_CFG.replace("Dataflow : ws", "Dataflow : xs"), r"line 14: 'Dataflow' in \[architecture_presets\] must be one of ws, os, is. Got 'xs'"),
        (SCALE_CFG.replace("Dataflow : ws\n", ""), "must set 'Dataflow'; it is missing"),
        (SCALE_CFG.replace("ArrayWidth:     32", "ArrayWidth:     3x2"), "line 6: 'ArrayWidth' .* must be a positive integer. Got '3x2'"),
        (SCALE_CFG.replace("ArrayHeight:    32", "ArrayHeight:    0"), "line 5: 'ArrayHeight'"),
        ("[general]\nrun_name = x\n", r"must have an \[architecture_presets\] section"),
        ("ArrayHeight: 4\n", "line 1: not a valid SCALE-Sim config .* must start with a \\[section\\]"),
        (SCALE_CFG.replace("MemoryBanks: 1", "MemoryBanks: 1\nDataflow: os"), "line 16: .*'dataflow' is set twice"),
        (SCALE_CFG.replace("MemoryBanks: 1", "this line is not ini"), "line 15: .*Got 'this line is not ini' instead"),
    ],
)
def test_read_config_rejects_bad_files(tmp_path, text, match):
    path = write(tmp_path, "bad.cfg", text)
    with pytest.raises(ValueError, match=match) as info:
        read_config(path)
    assert str(path) in str(info.value)


def test_read_config_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_config(tmp_path / "nope.cfg")


def test_read_config_binary_file(tmp_path):
    p = tmp_path / "bin.cfg"
    p.write_bytes(b"\xff\xfe\x00[general]")
    with pytest.raises(ValueError, match="not a UTF-8 text file"):
        read_config(p)


# --------------------------------------------------------------------------------------- topology


def test_read_conv_topology(tmp_path):
    layers = read_topology(write(tmp_path, "alexnet_part.csv", ALEXNET_PART))
    assert layers == [TopologyLayer("Conv1", 3025, 363, 96, 2)]


def test_read_conv_topology_blank_lines_comments_and_optional_trailing_comma(tmp_path):
    text = CONV_HEADER + "\n\tConv1, 10, 10, 3, 3, 4, 8, 2,\nConv2_dw, 7, 7, 3, 3, 1, 1, 2,#dw\nFC, 1, 1, 1, 1, 64, 10, 1\n\n"
    layers = read_topology(write(tmp_path, "t.csv", text))
    assert [(l.name, l.m, l.k, l.n, l.line) for l in layers] == [
        ("Conv1", 25, 36, 8, 3),
        ("Conv2_dw", 9, 9, 1, 4),
        ("FC", 1, 64, 10, 5),
    ]


def test_depthwise_dp_layers_expand_per_channel_like_scalesim(tmp_path):
    text = CONV_HEADER + "DPconv, 8, 8, 3, 3, 3, 1, 1,\n"
    layers = read_topology(write(tmp_path, "t.csv", text))
    assert [l.name for l in layers] == ["DPconvChannel_0", "DPconvChannel_1", "DPconvChannel_2"]
    assert all((l.m, l.k, l.n) == (36, 9, 1) for l in layers)


def test_read_gemm_topology_columns_are_m_n_k(tmp_path):
    text = "Layer Name, M, N, K,\nTest 1, 256, 128, 64,\nQKT,1024,1024,64\n"
    layers = read_topology(write(tmp_path, "g.csv", text), "gemm")
    assert layers == [TopologyLayer("Test 1", 256, 64, 128, 2), TopologyLayer("QKT", 1024, 64, 1024, 3)]


@pytest.mark.parametrize(
    "kind, text, match",
    [
        ("conv", CONV_HEADER + "Conv1, 224, 224, 11, eleven, 3, 96, 4,", "line 2: 'Filter Width' must be a positive integer. Got 'eleven'"),
        ("conv", CONV_HEADER + "Conv1, 224, 224, 11, 11, 3, 96,", "line 2: a conv topology row must have 8 fields .* Got 7 instead"),
        ("conv", CONV_HEADER + "ok, 4, 4, 1, 1, 1, 1, 1,\nConv1, 224, 224, 11, 11, 3, 96, 4, 4, 1,", "line 3: .*Got 10 instead"),
        ("conv", CONV_HEADER + "Conv1, 224, 224, 11, 11, 3, 96, 0,", "'Strides' must be a positive integer. Got '0'"),
        ("conv", CONV_HEADER + "Conv1, 224, 224, 11, 11, 3, -96, 4,", "'Num Filter' must be a positive integer. Got '-96'"),
        ("conv", CONV_HEADER + "Conv1, 5, 5, 7, 3, 1, 1, 1,", "'Filter Height' must be at most 'IFMAP Height' \\(5\\)"),
        ("conv", CONV_HEADER + ", 5, 5, 3, 3, 1, 1, 1,", "'Layer name' field must not be empty"),
        ("conv", "Conv1, 224, 224, 11, 11, 3, 96, 4,\n", "line 1: the first line must be a header"),
        ("conv", "", "the topology file is empty"),
        ("conv", CONV_HEADER + "\n\n", "no layers after its header"),
        ("gemm", ALEXNET_PART, "a gemm topology row must have 4 fields .* Got 8 instead \\(it looks like a conv topology\\)"),
        ("conv", "Layer, M, N, K,\nfc, 4, 5, 6,", "a conv topology row must have 8 fields .*\\(it looks like a gemm topology\\)"),
        ("gemm", "Layer, M, N, K,\nfc, 4, 5.5, 6,", "line 2: 'N' must be a positive integer. Got '5.5'"),
    ],
)
def test_read_topology_rejects_bad_rows(tmp_path, kind, text, match):
    path = write(tmp_path, "bad.csv", text)
    with pytest.raises(ValueError, match=match) as info:
        read_topology(path, kind)
    assert str(path) in str(info.value)


def test_read_topology_rejects_unknown_kind(tmp_path):
    with pytest.raises(ValueError, match="'kind' argument of read_topology must be one of conv, gemm"):
        read_topology(write(tmp_path, "t.csv", ALEXNET_PART), "fc")


# ----------------------------------------------------------------------------------------- report


def test_format_compute_row_is_scalesims():
    s = gemm_timing(3025, 363, 96, ArrayConfig(32, 32, "ws"))
    assert format_compute_row(0, s) == "0, 112283, 0, 91.68309650614964, 94.53125, 90.78000992063492,"
    full = gemm_timing(256, 256, 128, ArrayConfig(32, 32, "os"))
    assert format_compute_row(7, full).startswith("7, 10175, 0, ")
    assert ", 100.0, 80.50314465408806," in format_compute_row(7, full)


def test_write_compute_report_to_file_or_directory(tmp_path):
    stats = [gemm_timing(3025, 363, 96, ArrayConfig(32, 32, "ws")), gemm_timing(1, 1, 1, ArrayConfig(32, 32, "ws"))]
    expected = (
        COMPUTE_REPORT_HEADER + "\n"
        "0, 112283, 0, 91.68309650614964, 94.53125, 90.78000992063492,\n"
        f"1, {2 * 32 + 32 + 1 - 2 - 1}, 0, {stats[1].overall_util}, {stats[1].mapping_efficiency}, {stats[1].compute_util},\n"
    )
    p = write_compute_report(tmp_path, stats)
    assert p == tmp_path / "COMPUTE_REPORT.csv"
    assert p.read_text() == expected
    q = write_compute_report(tmp_path / "other.csv", stats)
    assert q.read_text() == expected


def test_header_is_scalesims():
    assert COMPUTE_REPORT_HEADER == (
        "LayerID, Total Cycles, Stall Cycles, Overall Util %, Mapping Efficiency %, Compute Util %,"
    )


def test_run_cycles_end_to_end(tmp_path):
    run = run_cycles(
        write(tmp_path, "scale.cfg", SCALE_CFG), write(tmp_path, "a.csv", ALEXNET_PART), tmp_path / "out" / "deep"
    )
    assert run.report == tmp_path / "out" / "deep" / "COMPUTE_REPORT.csv"
    assert run.report.read_text().splitlines()[1] == "0, 112283, 0, 91.68309650614964, 94.53125, 90.78000992063492,"
    assert run.config.array == ArrayConfig(32, 32, "ws")
    assert [l.name for l in run.layers] == ["Conv1"]
