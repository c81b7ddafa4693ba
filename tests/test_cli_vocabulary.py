"""One vocabulary for every `sysarray` subcommand: shared option names, types and defaults,
deprecated aliases that still work with a warning, every output path and numeric value checked
before any work, and docs/cli.md and README.md kept in step with the parsers."""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import sysarray as sa
from sysarray.cli import build_parser, main
from tests.clitools import leaf_parsers, run_cli, visible_options

REPO = Path(__file__).resolve().parent.parent
COMMANDS = ("train", "import-model", "run", "clip", "demo", "fat", "efat", "campaign", "sweep", "importance", "report",
            "faults generate", "faults show", "cycles", "repair", "diagnose", "kernels", "yield")


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "mlp.pt"
    assert main(["train", "--arch", "mlp", "--epochs", "1", "--quiet", "-o", str(path)]) == 0
    return path


PARSERS = dict(leaf_parsers(build_parser()))


def test_every_command_is_covered():
    assert set(PARSERS) == set(COMMANDS)


# ------------------------------------------------------------------------------ one vocabulary
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_states_its_default_or_that_it_is_required(name):
    missing = [a.option_strings[-1] for a in visible_options(PARSERS[name])
               if not a.required and "default" not in a.help and "required" not in a.help]
    assert not missing, f"sysarray {name}: options whose --help gives no default: {missing}"


SHARED = {"--value": "random", "--seed": 0, "--array": "16x16", "--dataflow": "ws", "--psum-bits": 32,
          "--device": "cpu", "--register": "psum", "--engine": "fast"}


@pytest.mark.parametrize("option, default", SHARED.items())
def test_shared_options_have_one_default_everywhere(option, default):
    seen = 0
    for name, p in PARSERS.items():
        for a in visible_options(p):
            if option in a.option_strings and not (option == "--array" and name in ("run", "fat", "diagnose")):
                assert a.default == default, f"sysarray {name} {option} defaults to {a.default!r}"
                seen += 1
    assert seen >= 2


def test_random_fault_options_are_the_same_in_run_campaign_and_faults_generate():
    names = {"--rate", "--fault-model", "--bernoulli", "--faults-per-pe", "--clusters", "--register", "--bits", "--value",
             "--seed"}
    for name, rate in (("run", "--rate"), ("faults generate", "--rate"), ("campaign", "--rates")):
        given = {s for a in visible_options(PARSERS[name]) for s in a.option_strings}
        assert (names - {"--rate"}) | {rate} <= given, name
    helps = {name: {a.option_strings[-1]: a.help for a in visible_options(PARSERS[name])}
             for name in ("run", "campaign", "faults generate")}
    for option in ("--fault-model", "--bernoulli", "--faults-per-pe", "--clusters", "--register", "--value"):
        assert len({h[option] for h in helps.values()}) == 1, option


def test_model_is_always_a_checkpoint_and_the_zoo_architecture_is_arch():
    for name, p in PARSERS.items():
        for a in visible_options(p):
            if "--model" in a.option_strings:
                assert a.metavar == "MODEL.pt", name
    assert any("--arch" in a.option_strings for a in visible_options(PARSERS["train"]))


def test_device_on_every_command_that_computes():
    for name in ("run", "campaign", "sweep", "importance", "train", "import-model", "fat", "efat", "clip"):
        assert any("--device" in a.option_strings for a in visible_options(PARSERS[name])), name


def test_docs_cli_lists_every_option_of_every_command():
    doc = (REPO / "docs" / "cli.md").read_text()
    sections = re.split(r"^### `sysarray ", doc, flags=re.M)
    by_command = {s.split("`", 1)[0]: s for s in sections[1:]}
    shared = doc.split("## Commands")[0]
    for name in COMMANDS:
        assert name in by_command, f"docs/cli.md has no section for sysarray {name}"
        for a in visible_options(PARSERS[name]):
            listed = any(f"`{s}" in by_command[name] or f"`{s}" in shared for s in a.option_strings)
            assert listed, f"docs/cli.md misses sysarray {name} {a.option_strings[-1]}"


# ------------------------------------------------------------------------------ deprecated aliases
def test_faults_generate_pe_rate_and_ber_aliases(tmp_path, capsys):
    code, out, err = run_cli(["faults", "generate", "--array", "8x8", "--pe-rate", "0.1", "--chips", "1",
                              "-o", tmp_path / "a"], capsys)
    assert code == 0, err
    assert err.strip() == ("sysarray: warning: --pe-rate is deprecated and will be removed in the next release; use "
                           "--rate X (the default --fault-model pe_rate, or clustered)")
    assert run_cli(["faults", "generate", "--array", "8x8", "--rate", "0.1", "--chips", "1", "-o", tmp_path / "b"],
                   capsys)[0] == 0
    assert sa.FaultMap.load(tmp_path / "a" / "chip-0000.npz") == sa.FaultMap.load(tmp_path / "b" / "chip-0000.npz")
    # --ber implies the BER model
    code, out, err = run_cli(["faults", "generate", "--array", "8x8", "--ber", "0.01", "--register", "weight",
                              "--chips", "1", "-o", tmp_path / "ber"], capsys)
    assert code == 0, err
    assert "--ber is deprecated" in err and "use --fault-model ber --rate X" in err and "ber 0.01" in out
    fm = sa.FaultMap.load(tmp_path / "ber" / "chip-0000.npz")
    assert len(fm) == round(0.01 * 64 * 48)


def test_run_pe_rate_alias(mlp, tmp_path, capsys):
    base = ["run", "--model", mlp, "--array", "8x8", "--limit", "20", "--bits", "28-31", "--seed", "2"]
    code, out, err = run_cli([*base, "--pe-rate", "0.1", "--json", tmp_path / "old.json"], capsys)
    assert code == 0 and "--pe-rate is deprecated" in err and err.count("\n") == 1
    assert run_cli([*base, "--rate", "0.1", "--json", tmp_path / "new.json"], capsys)[0] == 0
    old, new = (json.loads((tmp_path / f).read_text()) for f in ("old.json", "new.json"))
    assert old["accuracy"] == new["accuracy"] and old["faulty_pes"] == new["faulty_pes"] == round(0.1 * 64)


def test_train_model_alias(tmp_path, capsys):
    code, out, err = run_cli(["train", "--model", "mlp", "--epochs", "1", "--quiet", "-o", tmp_path / "m.pt"], capsys)
    assert code == 0 and (tmp_path / "m.pt").is_file()
    assert "--model is deprecated" in err and "use --arch NAME" in err and out.startswith("mlp on digits")


@pytest.fixture(scope="module")
def chips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vocab-chips")
    for i in range(2):
        sa.FaultMap.random((4, 4), pe_rate=0.25, registers=("psum",), bits=range(20, 32), values=(1,), seed=i).save(
            folder / f"chip-{i}.npz")
    return folder


def test_fat_chip_alias(mlp, chips, tmp_path, capsys):
    code, out, err = run_cli(["fat", "--model", mlp, "--chip", chips / "chip-0.npz", "--method", "fap", "--limit", "20",
                              "--quiet", "-o", tmp_path / "fap.pt"], capsys)
    assert code == 0, err
    assert "--chip is deprecated" in err and "use --faults CHIP.npz" in err and "4x4" in out  # the file's size


def test_efat_chips_and_map_faults_aliases(mlp, chips, tmp_path, capsys):
    out_dir = f"{tmp_path / 'e'}{os.sep}"  # a trailing separator must not double in the printed paths
    code, out, err = run_cli(["efat", "--model", mlp, "--chips", chips, "--map-faults", "clustered", "--array", "4x4",
                              "--max-drop", "0.9", "--bypass", "--rates", "0,0.3", "--amounts", "0",
                              "--maps-per-rate", "1", "--limit", "20", "--quiet", "-o", out_dir], capsys)
    assert code == 0, err
    assert "--chips is deprecated" in err and "use --faults-dir DIR" in err
    assert "--map-faults is deprecated" in err and "use --fault-model pe_rate|clustered" in err
    config = json.loads((tmp_path / "e" / "config.json").read_text())
    assert config["settings"]["map_faults"] == "clustered"
    assert os.path.join(tmp_path / "e", "cost.json") in out and os.sep * 2 not in out


def test_sweep_budget_alias(mlp, tmp_path, capsys):
    code, out, err = run_cli(["sweep", "--model", mlp, "--limit", "20", "--array", "4x4", "--bits", "31", "--value", "1",
                              "--budget", "3", "--workers", "1", "--quiet", "-o", tmp_path / "s"], capsys)
    assert code == 0, err
    assert "--budget is deprecated" in err and "use --pes-per-site N" in err
    assert len((tmp_path / "s" / "results.csv").read_text().splitlines()) == 1 + 3


def test_importance_budget_alias(mlp, tmp_path, capsys):
    out_dir = f"{tmp_path / 'i'}{os.sep}"
    code, out, err = run_cli(["importance", "--model", mlp, "--limit", "20", "--array", "4x4", "--bits", "28-31",
                              "--value", "1", "--budget", "3", "--calibration-images", "16", "--workers", "1", "--quiet",
                              "-o", out_dir], capsys)
    assert code == 0, err
    assert "--budget is deprecated" in err and "use --draws N" in err
    res = json.loads((tmp_path / "i" / "importance.json").read_text())
    assert res["importance"]["draws"] == 3
    assert f"wrote {os.path.join(tmp_path / 'i', 'importance.json')}" in out and os.sep * 2 not in out


def test_an_alias_with_bad_input_prints_the_error_line_only(capsys):
    code, _, err = run_cli(["fat", "--model", "x.pt", "--chip", "missing.npz", "--method", "fap", "-o", "y.pt"], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("sysarray: error:") and "missing.npz" in err


def test_aliases_are_hidden_from_help(capsys):
    for argv, alias in ((["run", "--help"], "--pe-rate"), (["train", "--help"], "--model"), (["fat", "--help"], "--chip"),
                        (["efat", "--help"], "--chips"), (["sweep", "--help"], "--budget"),
                        (["faults", "generate", "--help"], "--ber")):
        assert main(argv) == 0
        assert not re.search(rf"{alias}\b(?![-.])", capsys.readouterr().out), (argv, alias)


# ------------------------------------------------------------------------------ output paths before any work
@pytest.fixture
def no_work(monkeypatch):
    """Training, lowering and campaigns fail the test if a command gets that far."""
    import accel_models.evaluation
    import accel_models.train
    import mitigation.campaign.run

    def forbidden(*args, **kwargs):
        raise AssertionError("the command started working before checking its output path")

    monkeypatch.setattr(accel_models.train, "train_zoo_model", forbidden)
    monkeypatch.setattr(accel_models.evaluation, "prepare", forbidden)
    monkeypatch.setattr(mitigation.campaign.run, "run_campaign", forbidden)
    monkeypatch.setattr(mitigation.campaign, "run_campaign", forbidden)


@pytest.mark.parametrize("argv, option, kind", [
    (["train", "--arch", "mlp", "-o", "{dir}"], "-o/--out", "directory"),
    (["run", "--model", "m.pt", "--json", "{dir}"], "--json", "directory"),
    (["import-model", "--factory", "net.py:build", "--dataset", "digits", "-o", "{dir}"], "-o/--out", "directory"),
    (["clip", "--method", "ranger", "--model", "m.pt", "-o", "{dir}"], "-o/--out", "directory"),
    (["fat", "--model", "m.pt", "--faults", "c.npz", "--method", "fap", "-o", "{dir}"], "-o/--out", "directory"),
    (["fat", "--model", "m.pt", "--faults", "c.npz", "--method", "fap", "--json", "{dir}", "-o", "x.pt"], "--json",
     "directory"),
    (["campaign", "--model", "m.pt", "--rates", "0.1", "-o", "{file}"], "-o/--out", "file"),
    (["efat", "--model", "m.pt", "--faults-dir", ".", "--max-drop", "0.1", "-o", "{file}"], "-o/--out", "file"),
    (["faults", "generate", "--rate", "0.1", "-o", "{file}"], "-o/--out", "file"),
    (["train", "--arch", "mlp", "-o", "{file}/model.pt"], "-o/--out", "under a file"),
    (["sweep", "--model", "m.pt", "-o", "{file}/sweep"], "-o/--out", "under a file"),
])
def test_output_paths_are_checked_before_any_work(argv, option, kind, tmp_path, capsys, no_work):
    (tmp_path / "taken.txt").write_text("keep")
    subs = {"dir": str(tmp_path), "file": str(tmp_path / "taken.txt")}
    argv = [a.format(**subs) for a in argv]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and err.count("\n") == 1, err
    target = next(a for a in argv if a.startswith(str(tmp_path)))
    assert f"argument {option}: '{target}'" in err and ".tmp" not in err
    expected = {"directory": "is an existing directory; expected the path of a file to write",
                "file": "is an existing file; expected a directory",
                "under a file": "cannot be created: '" + subs["file"] + "' is a file, not a directory"}[kind]
    assert expected in err
    assert (tmp_path / "taken.txt").read_text() == "keep"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only directory")
def test_a_read_only_directory_is_refused_before_training(tmp_path, capsys, no_work):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        code, _, err = run_cli(["train", "--arch", "mlp", "-o", locked / "m.pt"], capsys)
    finally:
        locked.chmod(0o755)
    assert code == 2 and f"'{locked / 'm.pt'}' cannot be written: the directory '{locked}' is not writable" in err


def test_check_output_names_the_users_path(tmp_path):
    from sysarray.cliargs import check_output

    assert check_output(tmp_path / "new" / "deeper" / "m.pt") == str(tmp_path / "new" / "deeper" / "m.pt")
    assert check_output(tmp_path, "dir") == str(tmp_path)
    with pytest.raises(ValueError, match=re.escape(f"--json '{tmp_path}' is an existing directory")):
        check_output(tmp_path, "file", "--json")


# ------------------------------------------------------------------------------ numbers checked while parsing
BAD_NUMBERS = [
    ("train --arch mlp -o m.pt", "--epochs", "-1", "a positive integer"),
    ("train --arch mlp -o m.pt", "--batch-size", "0", "a positive integer"),
    ("train --arch mlp -o m.pt", "--lr", "0", "a positive number"),
    ("train --arch mlp -o m.pt", "--seed", "-1", "a non-negative integer"),
    ("import-model --factory f.py:b --dataset digits -o m.pt", "--train-epochs", "-1", "a non-negative integer"),
    ("run --model m.pt", "--limit", "0", "a positive integer"),
    ("run --model m.pt", "--rate", "nan", "a number within [0, 1]"),
    ("run --model m.pt", "--faults-per-pe", "0", "a positive integer"),
    ("run --model m.pt", "--clusters", "0", "a positive integer"),
    ("run --model m.pt", "--psum-bits", "40", "an integer within 17..32"),
    ("run --model m.pt", "--array", "0x4", "at least 1 row and 1 column"),
    ("clip --method fitact --model m.pt -o c.pt", "--epochs", "-1", "a positive integer"),
    ("clip --method ranger --model m.pt -o c.pt", "--calibration-images", "0", "a positive integer"),
    ("clip --method ftclipact --model m.pt -o c.pt", "--repetitions", "0", "a positive integer"),
    ("clip --method ftclipact --model m.pt -o c.pt", "--tolerance", "-0.5", "a non-negative number"),
    ("clip --method ftclipact --model m.pt -o c.pt", "--rates", "1e-6,2", "comma-separated distinct numbers"),
    ("demo", "--seed", "-1", "a non-negative integer"),
    ("fat --model m.pt --faults c.npz --method fapt -o x.pt", "--epochs", "-2", "a non-negative number"),
    ("fat --model m.pt --faults c.npz --method random -o x.pt", "--p", "1.5", "a number within [0, 1]"),
    ("efat --model m.pt --faults-dir d -o e", "--max-drop", "-0.1", "a number within [0, 1]"),
    ("efat --model m.pt --faults-dir d --max-drop 0.1 -o e", "--maps-per-rate", "0", "a positive integer"),
    ("efat --model m.pt --faults-dir d --max-drop 0.1 -o e", "--train-limit", "1", "an integer of at least 2"),
    ("efat --model m.pt --faults-dir d --max-drop 0.1 -o e", "--conventional-epochs", "-1", "a non-negative number"),
    ("campaign --model m.pt --rates 0.1 -o c", "--confidence", "0", "a number within (0, 1)"),
    ("sweep --model m.pt -o s", "--pes-per-site", "0", "a positive integer"),
    ("importance --model m.pt -o i", "--draws", "1", "an integer of at least 2"),
    ("importance --model m.pt -o i", "--uniform-mix", "1.1", "a number within (0, 1]"),
    ("importance --model m.pt -o i", "--uniform-mix", "0", "a number within (0, 1]"),
    ("faults generate --rate 0.1 -o d", "--chips", "-3", "a positive integer"),
    ("faults show chip.npz", "--max-faults", "-1", "a non-negative integer"),
]


@pytest.mark.parametrize("command, option, value, requirement", BAD_NUMBERS)
def test_numeric_options_are_checked_while_parsing(command, option, value, requirement, capsys, no_work, monkeypatch):
    import mitigation.demo

    monkeypatch.setattr(mitigation.demo, "run_demo", lambda **kw: pytest.fail("the demo started"))
    code, _, err = run_cli([*shlex.split(command), option, value], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert f"argument {option}: " in err and requirement in err, err
    assert ".." not in err.replace("17..32", "")


# ------------------------------------------------------------------------------ the chip of `run`
def _run_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["run", "--model", "m.pt", *argv])


def test_run_draws_the_map_of_faults_generate_and_campaign(tmp_path, capsys):
    from mitigation.campaign import FaultGroup, RateGrid
    from sysarray.cliargs import chip_from_args

    options = ["--array", "8x12", "--rate", "0.2", "--fault-model", "clustered", "--clusters", "2", "--faults-per-pe",
               "2", "--register", "psum,weight", "--bits", "4-7", "--value", "1", "--seed", "5"]
    cfg, fm = chip_from_args(_run_args(*options))
    assert fm.n_faulty_pes == round(0.2 * 96) and (fm.rows, fm.cols) == (8, 12)
    assert main(["faults", "generate", *options, "--chips", "3", "-o", str(tmp_path / "chips")]) == 0
    assert sa.FaultMap.load(tmp_path / "chips" / "chip-0000.npz") == fm
    grid = RateGrid([0.2], 3, 5, [FaultGroup(("psum", "weight"), tuple(range(4, 8)), (1,))], method="clustered",
                    faults_per_pe=2, n_clusters=2)
    assert grid.chip(0, cfg)[0] == fm


def test_run_takes_the_array_size_from_the_faults_file(tmp_path):
    from sysarray.cliargs import chip_from_args

    sa.FaultMap(4, 6).add(1, 2, "psum", 30, 1).save(tmp_path / "chip.npz")
    cfg, fm = chip_from_args(_run_args("--faults", str(tmp_path / "chip.npz"), "--dataflow", "os"))
    assert (cfg.rows, cfg.cols, cfg.dataflow.value) == (4, 6, "os") and len(fm) == 1
    assert chip_from_args(_run_args("--faults", str(tmp_path / "chip.npz"), "--array", "4x6"))[0].rows == 4
    with pytest.raises(ValueError, match=re.escape(f"--array 8x8 does not match the fault-map file "
                                                   f"'{tmp_path / 'chip.npz'}', which is for a 4x6 array")):
        chip_from_args(_run_args("--faults", str(tmp_path / "chip.npz"), "--array", "8x8"))
    with pytest.raises(ValueError, match="outside the 24-bit psum register"):
        chip_from_args(_run_args("--faults", str(tmp_path / "chip.npz"), "--psum-bits", "24"))


# ------------------------------------------------------------------------------ device
@pytest.mark.parametrize("command", ["clip --method ranger -o c.pt", "yield --defect-density 0.1 -o y"])
def test_cpu_only_commands_refuse_cuda_with_one_line(command, capsys, no_work):
    name, *rest = shlex.split(command)
    code, _, err = run_cli([name, "--model", "m.pt", *rest, "--device", "cuda"], capsys)
    assert code == 2 and err.count("\n") == 1 and f"sysarray {name} runs on the CPU only" in err, err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this torch can use a GPU")
@pytest.mark.parametrize("argv", [["train", "--arch", "mlp", "-o", "m.pt"], ["run", "--model", "m.pt"],
                                  ["import-model", "--factory", "f.py:b", "--dataset", "digits", "-o", "m.pt"],
                                  ["campaign", "--model", "m.pt", "--rates", "0.1", "-o", "c"],
                                  ["sweep", "--model", "m.pt", "-o", "s"], ["importance", "--model", "m.pt", "-o", "i"],
                                  ["fat", "--model", "m.pt", "--faults", "c.npz", "--method", "stuckat", "-o", "f.pt"],
                                  ["efat", "--model", "m.pt", "--faults-dir", "d", "--max-drop", "0.1", "-o", "e"]])
def test_cuda_without_a_cuda_torch_is_one_line(argv, capsys, no_work, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli([*argv, "--device", "cuda"], capsys)
    assert code == 2 and err.count("\n") == 1 and "--device cuda needs a CUDA-enabled torch" in err, err


# ------------------------------------------------------------------------------ campaign scheduler
def test_an_unreachable_scheduler_is_refused_before_the_directory_is_made(mlp, tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free once closed: nothing listens there
    out = tmp_path / "camp"
    code, _, err = run_cli(["campaign", "--model", mlp, "--limit", "10", "--array", "4x4", "--rates", "0.1",
                            "--chips-per-rate", "1", "--scheduler", f"tcp://127.0.0.1:{port}", "--quiet", "-o", out],
                           capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert f"--scheduler tcp://127.0.0.1:{port}: no Dask scheduler answers there" in err
    assert not out.exists()
    code, _, err = run_cli(["campaign", "--model", "m.pt", "--rates", "0.1", "--scheduler", "tcp://host:port",
                            "-o", out], capsys)
    assert code == 2 and "--scheduler must be a Dask scheduler address" in err and not out.exists()


# ------------------------------------------------------------------------------ messages
def test_a_bad_fault_in_a_file_is_reported_without_a_double_period(tmp_path, capsys):
    np.savez(tmp_path / "bad.npz", format=np.array("sysarray-faultmap"), version=np.array(1), rows=np.array(8),
             cols=np.array(8), faults=np.array([[12, 0, 2, 30, 1]]))
    code, _, err = run_cli(["faults", "show", tmp_path / "bad.npz"], capsys)
    assert code == 2 and "Got 12 instead" in err
    assert "instead.." not in err and not err.rstrip().endswith("..")


# ------------------------------------------------------------------------------ README
def readme_commands() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.S)
    lines = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]
    return [shlex.split(line)[1:] for line in lines if line.startswith("sysarray ")]


def test_readme_examples_parse_without_deprecated_options(capsys):
    commands = readme_commands()
    assert {c[0] for c in commands} >= {"train", "run", "campaign", "sweep", "importance", "fat", "efat", "faults", "clip"}
    for argv in commands:
        args = build_parser().parse_args(argv)
        assert not getattr(args, "deprecation_warnings", None), argv
    assert capsys.readouterr().err == ""


def test_readme_rates_place_faults_on_their_arrays():
    from mitigation.campaign.commands import campaign_population
    from sysarray.cliargs import chip_from_args

    checked = 0
    for argv in readme_commands():
        args = build_parser().parse_args(argv)
        if argv[0] == "campaign" and args.rates:
            campaign_population(args)
            checked += 1
        elif argv[0] == "run" and args.rate is not None:
            assert not chip_from_args(args)[1].is_empty
            checked += 1
    assert checked >= 2


# ------------------------------------------------------------------------------ start-up
def test_building_the_parser_imports_neither_torch_nor_numba():
    code = ("import sys, sysarray.cli; sysarray.cli.build_parser(); import accel_models; "
            "print(sorted(m for m in ('torch', 'numba', 'accel_models.program', 'accel_models.lowering') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert out.strip() == "[]"


def test_accel_models_names_still_load():
    import accel_models as am
    from accel_models import FakeQuantProgram, lower

    assert am.lower is lower and am.FakeQuantProgram is FakeQuantProgram
    assert am.Program.__name__ == "Program" and callable(am.load_checkpoint) and callable(am.build_model)
    assert set(am.__all__) <= set(dir(am))
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        am.nothing  # noqa: B018
