"""numba's threading layer and the OpenMP spin chosen by measurement per machine
(sysarray.threading_choice) and taken by process tuning (sysarray.runtime.configure)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from sysarray import kernel_cache, threading_choice


@pytest.fixture
def cache(tmp_path):
    kernel_cache.configure(tmp_path / "sysarray" / "kernels")
    yield tmp_path
    kernel_cache.configure(False)


def test_a_recorded_choice_is_read_back_per_thread_count(cache):
    assert threading_choice.recorded(2) is None
    file = threading_choice.record(2, "omp/default", {"omp/default": 0.03, "workqueue/short": 0.036})
    assert file == threading_choice.path() and file.parent == cache / "sysarray" / "kernels"
    assert threading_choice.recorded(2) == ("omp", "default") and threading_choice.recorded(1) is None
    threading_choice.record(1, "workqueue/short", {"omp/short": 0.02, "workqueue/short": 0.01})
    assert threading_choice.recorded_all()["1"]["settings"] == "workqueue/short"
    assert threading_choice.recorded(2) == ("omp", "default")
    with pytest.raises(ValueError, match="must be one of workqueue/short, omp/short, workqueue/default, omp/default. "
                                         "Got 'tbb/short'"):
        threading_choice.record(2, "tbb/short", {})
    assert threading_choice.clear() == file and not file.exists()


def test_the_layer_file_does_not_depend_on_the_layer_and_the_kernel_file_does(cache, monkeypatch):
    monkeypatch.setenv("NUMBA_THREADING_LAYER", "workqueue")
    kernels_wq, layer_wq = kernel_cache.path(), threading_choice.path()
    monkeypatch.setenv("NUMBA_THREADING_LAYER", "omp")
    assert kernel_cache.machine_signature()["threading_layer"] == "omp"
    assert kernel_cache.path() != kernels_wq and threading_choice.path() == layer_wq


@pytest.mark.parametrize("content", ["{not json", json.dumps({"format": "other"}),
                                     json.dumps({"format": threading_choice.FORMAT, "version": threading_choice.VERSION,
                                                 "machine": {"cpu": "another"},
                                                 "choices": {"2": {"settings": "omp/short"}}})])
def test_a_file_of_another_format_or_machine_is_ignored(cache, content):
    file = threading_choice.path()
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(content)
    assert threading_choice.recorded(2) is None


def test_memory_only_keeps_nothing():
    assert threading_choice.path() is None and threading_choice.recorded(2) is None
    assert threading_choice.record(2, "omp/short", {"omp/short": 1.0}) is None


def test_measure_times_every_setting_in_child_processes_and_keeps_the_fastest(cache):
    seen = []
    res = threading_choice.measure(1, repeats=1, rounds=2, size="quick", on_probe=lambda c, got: seen.append(c))
    assert seen == list(threading_choice.CANDIDATES)
    ran = res["median_s"]
    assert set(ran) | set(res["failed"]) == set(threading_choice.CANDIDATES) and "workqueue/short" in ran
    assert res["settings"] == min(ran, key=ran.get) and all(t > 0 for t in ran.values())
    assert threading_choice.recorded(1) == tuple(res["settings"].split("/")) and res["file"] == threading_choice.path()


@pytest.mark.parametrize("recorded", [None, "omp/default", "workqueue/short"])
def test_a_probe_sees_the_settings_it_was_given(cache, recorded):
    """The child applies exactly the candidate's layer and spin, whatever the machine has recorded
    (else the timings mean nothing)."""
    if recorded:
        threading_choice.record(1, recorded, {recorded: 0.01})
    code = ("import json, os, sys, numba; from sysarray.threading_probe import tune; "
            "t = tune(1, sys.argv[1] == 'short'); "
            "print(json.dumps([numba.config.THREADING_LAYER, os.environ.get('GOMP_SPINCOUNT'), t.numba_layer]))")
    for candidate in threading_choice.CANDIDATES:
        layer, spin = threading_choice.settings(candidate)
        env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
        out = subprocess.run([sys.executable, "-c", code, spin], capture_output=True, text=True, timeout=300,
                             env={**env, "NUMBA_THREADING_LAYER": layer, "XDG_CACHE_HOME": str(cache)})
        want = [layer, "3000" if spin == "short" else None, layer]
        assert json.loads(out.stdout) == want, out.stderr


def test_a_setting_that_cannot_run_is_reported_and_left_out(cache, monkeypatch):
    def probe(candidate, threads, rounds, size):
        if candidate.startswith("omp"):
            raise RuntimeError("ValueError: No threading layer could be loaded.")
        return [0.02 if candidate.endswith("short") else 0.01] * rounds

    monkeypatch.setattr(threading_choice, "probe", probe)
    res = threading_choice.measure(2, repeats=2, rounds=3)
    why = "ValueError: No threading layer could be loaded."
    assert res["settings"] == "workqueue/default" and res["failed"] == {"omp/short": why, "omp/default": why}
    assert res["median_s"] == {"workqueue/short": 0.02, "workqueue/default": 0.01}
    assert threading_choice.recorded(2) == ("workqueue", "default")


CONFIGURE = """
import json, os
import sysarray.runtime as rt
t = rt.configure(threads=2)
import numba
print(json.dumps(dict(layer=t.numba_layer, spin=t.omp_spin, measured=t.measured, numba=numba.config.THREADING_LAYER,
                      env=os.environ.get("GOMP_SPINCOUNT"))))
"""


def _configured(tmp_path, **env) -> dict:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("NUMBA_THREADING_LAYER", "GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", CONFIGURE], capture_output=True, text=True, timeout=300,
                         env={**clean, "XDG_CACHE_HOME": str(tmp_path), **env})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_configure_takes_the_measured_settings_unless_the_user_set_them(cache):
    default = {"layer": "default", "spin": "default", "measured": False, "numba": "default", "env": None}
    assert _configured(cache) == default  # nothing measured: the libraries' own settings
    threading_choice.record(2, "workqueue/short", {"workqueue/short": 0.03, "omp/default": 0.036})
    assert _configured(cache) == {"layer": "workqueue", "spin": "set", "measured": True, "numba": "workqueue",
                                  "env": "3000"}
    threading_choice.record(2, "omp/default", {"omp/default": 0.03, "workqueue/short": 0.036})
    assert _configured(cache) == {"layer": "omp", "spin": "default", "measured": True, "numba": "omp", "env": None}
    assert _configured(cache, NUMBA_THREADING_LAYER="workqueue", GOMP_SPINCOUNT="100") == \
        {"layer": "workqueue", "spin": "kept", "measured": True, "numba": "workqueue", "env": "100"}
    threading_choice.record(2, "omp/short", {"omp/short": 0.03})
    assert _configured(cache) == {"layer": "omp", "spin": "set", "measured": True, "numba": "omp", "env": "3000"}


# ------------------------------------------------------------------------------ sysarray kernels
def test_kernels_command_measures_shows_and_clears_the_layer(cache, capsys, monkeypatch):
    from tests.clitools import run_cli

    def probe(candidate, threads, rounds, size):
        return [0.02 if candidate == "omp/default" else 0.03] * rounds

    monkeypatch.setattr(threading_choice, "probe", probe)
    code, out, err = run_cli(["kernels", "--measure-layer", "--threads", "2", "--repeats", "1", "--quiet"], capsys)
    assert code == 0, err
    assert "  omp/default        20.00\n" in out and "2 thread(s): omp/default is the fastest here; kept in" in out
    code, out, _ = run_cli(["kernels"], capsys)
    assert code == 0 and "2 thread(s): omp/default (median ms per probe round: omp/default 20, omp/short 30, " \
                         "workqueue/default 30, workqueue/short 30)" in out
    kernel_cache.record("test.shown", (1, 2), "b", {"a": 0.002, "b": 0.001})
    kernel_cache.record("test.shown", (3, 4), "a", {"a": 0.001, "b": 0.002}, confirmations=2)
    code, out, _ = run_cli(["kernels"], capsys)
    assert code == 0 and re.search(r"test\.shown +\[1, 2\] +b +to recheck +a 2, b 1\n", out)
    assert re.search(r"test\.shown +\[3, 4\] +a +confirmed +a 1, b 2\n", out)
    code, out, _ = run_cli(["kernels", "--clear"], capsys)
    assert code == 0 and str(threading_choice.path()) in out and threading_choice.recorded(2) is None


def test_kernels_command_options_of_the_measurement_need_it(capsys):
    from tests.clitools import run_cli

    code, _, err = run_cli(["kernels", "--threads", "2"], capsys)
    assert code == 2 and err.count("\n") == 1 and "--threads and --repeats apply to --measure-layer." in err
