"""`sysarray faults generate` and `sysarray faults show`."""
from __future__ import annotations

import json

import numpy as np
import pytest

import sysarray as sa
from sysarray import faultgen, faultio
from tests.clitools import run_cli


def test_generate_writes_the_seeded_population(tmp_path, capsys):
    code, out, err = run_cli(["faults", "generate", "--array", "16x8", "--rate", "0.05", "--register", "psum,act",
                              "--bits", "4-7", "--value", "1", "--chips", "4", "--seed", "11", "-o", tmp_path / "a"], capsys)
    assert code == 0, err
    assert "wrote 4 fault maps" in out
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == [f"chip-{i:04d}.npz" for i in range(4)]
    expected = faultgen.population(4, (16, 8), seed=11, pe_rate=0.05, registers=("psum", "act"), bits=[4, 5, 6, 7],
                                   values=(1,))
    for i in range(4):
        fm, meta = faultio.load_with_meta(tmp_path / "a" / files[i])
        assert fm == expected[i] and fm.n_faulty_pes == round(0.05 * 128)
        assert all(f.value == 1 and 4 <= f.bit <= 7 for f in fm)
        assert (meta["chip"], meta["seed"], meta["group"], meta["rate"]) == (i, 11, "psum+act:4-7:1", 0.05)
    # chip i does not depend on the population size
    assert run_cli(["faults", "generate", "--array", "16x8", "--rate", "0.05", "--register", "psum,act", "--bits",
                    "4-7", "--value", "1", "--chips", "2", "--seed", "11", "-o", tmp_path / "b"], capsys)[0] == 0
    assert sa.FaultMap.load(tmp_path / "b" / "chip-0001.npz") == expected[1]


def test_generate_ber_and_clustered_models(tmp_path, capsys):
    code, _, err = run_cli(["faults", "generate", "--array", "8x8", "--fault-model", "ber", "--rate", "0.01",
                            "--register", "weight", "--chips", "2", "--seed", "0", "-o", tmp_path / "ber"], capsys)
    assert code == 0, err
    fm = sa.FaultMap.load(tmp_path / "ber" / "chip-0000.npz")
    assert len(fm) == round(0.01 * 64 * 48) and fm.registers() == (sa.Register.WEIGHT,)
    code, _, err = run_cli(["faults", "generate", "--array", "16x16", "--rate", "0.1", "--fault-model", "clustered",
                            "--clusters", "2", "--chips", "1", "--seed", "0", "-o", tmp_path / "cl"], capsys)
    assert code == 0, err
    fm, meta = faultio.load_with_meta(tmp_path / "cl" / "chip-0000.npz")
    assert fm.n_faulty_pes == round(0.1 * 256) and meta["generator"] == "clustered"
    assert meta["settings"]["n_clusters"] == 2


def test_show_prints_the_faults_and_a_picture(tmp_path, capsys):
    fm = sa.FaultMap(4, 6).add(1, 2, "psum", 30, 1).add(3, 5, "weight", 7, 0).add(3, 5, "act", 0, 1)
    path = tmp_path / "chip.npz"
    fm.save(path, meta={"note": "hand-made"})
    code, out, err = run_cli(["faults", "show", path], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("FaultMap 4x6: 3 stuck bit(s) in 2 PE(s)")
    assert "    1     2  psum      30  1" in lines
    picture = lines[lines.index("  012345"):][:5]
    assert picture == ["  012345", "0 ......", "1 ..p...", "2 ......", "3 .....*"]
    assert json.loads(out.split("meta: ")[1]) == {"note": "hand-made"}
    code, out, err = run_cli(["faults", "show", tmp_path], capsys)
    assert code == 0 and out.startswith("chip.npz: FaultMap 4x6")


@pytest.mark.parametrize("extra, message", [
    (["--rate", "1.5"], "argument --rate: must be a number within [0, 1]. Got '1.5'"),
    (["--rate", "0.1", "--register", "bogus"], "must be one of weight, act, psum. Got 'bogus'"),
    (["--rate", "0.1", "--register", "act", "--bits", "0-9"], "within 0..7 for register 'act'. Got 8"),
    (["--rate", "0.1", "--psum-bits", "24", "--bits", "30"], "within 0..23 for register 'psum'. Got 30"),
    (["--rate", "0.1", "--value", "2"], "argument --value: invalid choice: '2'"),
    (["--rate", "0.1", "--chips", "0"], "argument --chips: must be a positive integer. Got '0'"),
    ([], "the following argument is required: --rate"),
    (["--rate", "0.001"], "--rate 0.001 places no faulty PE on a 8x8 array"),
    (["--rate", "0.0001", "--fault-model", "ber"], "--rate 0.0001 places no stuck bit on a 8x8 array"),
    (["--pe-rate", "0.1", "--fault-model", "ber"], "--pe-rate is a rate of the pe_rate or clustered model"),
])
def test_generate_bad_input_is_one_line_exit_2(extra, message, tmp_path, capsys):
    code, out, err = run_cli(["faults", "generate", "--array", "8x8", "-o", tmp_path / "x", *extra], capsys)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


def test_show_bad_file_is_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, something=np.zeros(3))
    for target, message in ((bad, "is not usable: missing key(s)"), (tmp_path / "nope.npz", "does not exist")):
        code, _, err = run_cli(["faults", "show", target], capsys)
        assert code == 2 and err.count("\n") == 1 and message in err, err
