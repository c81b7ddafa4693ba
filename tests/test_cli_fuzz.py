"""Fuzzing the command line: hypothesis draws argument lists from every command's own options
(values of the right kind, out of range or malformed, paths to missing, corrupt, empty and
wrong-kind files) and checks that each command answers like one tool: exit code 0 or 2, on exit 2
exactly one line on stderr, never a traceback, and nothing half-written left behind.

Commands that would compute for long (training, campaigns, ...) always get one poisoned value
(malformed, or a file that cannot be what is asked for), so every example of theirs stops at
validation; the cheap ones (``cycles``, ``faults``, ``report``) may also succeed.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sysarray.cli import build_parser, main
from tests.clitools import leaf_parsers, visible_options

CHEAP = {"cycles", "faults", "report"}
# Values that no option takes: each is malformed for numbers, names, lists and choices alike.
MALFORMED = ["x", "nan", "-inf", "1e999", "", "--", "0x", "1,,2", "-1-", "8x", "a:b:c", "é"]
NUMBERS = ["0", "1", "2", "-1", "0.5", "1e-9", "3", "17", "-0.5", "100"]
LISTS = ["0,0.01", "0.01,0.02", "24-31", "31", "psum", "psum,act", "weight", "0,1", "random", "8x8", "4x4"]


COMMANDS = dict(leaf_parsers(build_parser()))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Paths a fuzzed option may name: missing, empty, corrupt, a directory, wrong kinds."""
    root = tmp_path_factory.mktemp("fuzzfiles")
    (root / "empty.pt").write_bytes(b"")
    (root / "garbage.pt").write_bytes(os.urandom(300))
    (root / "garbage.npz").write_bytes(b"PK\x03\x04" + os.urandom(200))
    (root / "text.json").write_text('{"not": "what was asked for"')
    np.savez(root / "wrong.npz", a=np.zeros(3))
    (root / "dir").mkdir()
    (root / "config.cfg").write_text("[architecture_presets]\nArrayHeight: 4\nArrayWidth: x\n")
    (root / "topology.csv").write_text("Layer name, M, N, K,\nfc, 4, 4,\n")
    return {"missing": str(root / "missing" / "nothing.pt"), "empty": str(root / "empty.pt"),
            "garbage": str(root / "garbage.pt"), "garbage_npz": str(root / "garbage.npz"),
            "json": str(root / "text.json"), "wrong_npz": str(root / "wrong.npz"), "dir": str(root / "dir"),
            "cfg": str(root / "config.cfg"), "csv": str(root / "topology.csv")}


def _is_output(action: argparse.Action) -> bool:
    return action.dest in ("out", "json") or any(s in ("-o", "--out", "--json") for s in action.option_strings)


@st.composite
def argv(draw, files: dict[str, str], out_dir: Path, existing: Path) -> tuple[list[str], str]:
    """(argument list, its command) for one fuzzed call, outputs under ``out_dir`` or the existing
    file ``existing`` (an output a command may overwrite: not one of the input ``files``)."""
    command = draw(st.sampled_from(sorted(COMMANDS)))
    parser = COMMANDS[command]
    options = visible_options(parser)
    paths = sorted(files.values())
    chosen = draw(st.lists(st.sampled_from(options), unique_by=id, max_size=len(options))) if options else []
    required = [a for a in options if a.required and a not in chosen]
    words = command.split()
    poisoned = command.split()[0] in CHEAP
    for action in [*required, *chosen]:
        flag = draw(st.sampled_from(action.option_strings))
        if action.nargs == 0:
            words.append(flag)
            continue
        if _is_output(action):
            value = draw(st.sampled_from([str(out_dir / "result"), str(out_dir / "result.json"), files["dir"],
                                          str(existing), str(out_dir / "missing" / "deeper" / "x")]))
        elif action.choices is not None:
            value = draw(st.sampled_from([*map(str, action.choices), *MALFORMED[:3]]))
        else:
            value = draw(st.sampled_from([*NUMBERS, *LISTS, *paths, *MALFORMED]))
        # an input that cannot be what is asked for stops the command; an output path may be valid
        poisoned = poisoned or value in MALFORMED or (value in paths and not _is_output(action))
        words += [flag, value]
    if not poisoned:  # an expensive command with every value plausible: make one malformed
        targets = [a for a in options if a.nargs != 0 and not _is_output(a)]
        if not targets:
            words += ["--no-such-option"]
        else:
            action = draw(st.sampled_from(targets))
            words += [action.option_strings[0], draw(st.sampled_from(MALFORMED[:6] + [files["garbage"]]))]
    return words, command


def _snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*")}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(data=st.data())
def test_every_command_answers_bad_input_with_one_line_and_exit_2(data, files, tmp_path, monkeypatch):
    run_dir = Path(tempfile.mkdtemp(dir=tmp_path))
    existing = Path(tempfile.mkdtemp(dir=tmp_path)) / "existing.pt"
    existing.write_bytes(b"")
    monkeypatch.chdir(run_dir)
    words, command = data.draw(argv(files, run_dir, existing))
    before = _snapshot(Path(files["dir"]).parent)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(words)  # an exception escaping main is a failure: the user would see a traceback
    lines = [line for line in err.getvalue().splitlines() if line.strip() and "deprecated" not in line]
    event(f"{command}: exit {code}")
    assert code in (0, 2), (words, code, err.getvalue())
    assert "Traceback" not in err.getvalue(), words
    if code == 2:
        assert len(lines) == 1, (words, err.getvalue())
        assert lines[0].startswith("sysarray"), (words, lines)
        # a refused command leaves no output behind: nothing new under the run directory
        assert [p for p in run_dir.rglob("*")] == [], (words, sorted(map(str, run_dir.rglob("*"))))
    assert not [p for p in run_dir.rglob("*.tmp")], words
    assert _snapshot(Path(files["dir"]).parent) == before, words  # the input files are never touched
