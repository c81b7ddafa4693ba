"""numba's threading layer chosen by measurement per machine (sysarray.threading_choice) and taken
by process tuning (sysarray.runtime.configure)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sysarray import kernel_cache, threading_choice


@pytest.fixture
def cache(tmp_path):
    kernel_cache.configure(tmp_path / "sysarray" / "kernels")
    yield tmp_path
    kernel_cache.configure(False)


def test_a_recorded_layer_is_read_back_per_thread_count(cache):
    assert threading_choice.recorded(2) is None
    file = threading_choice.record(2, "omp", {"omp": 0.03, "workqueue": 0.036})
    assert file == threading_choice.path() and file.parent == cache / "sysarray" / "kernels"
    assert threading_choice.recorded(2) == "omp" and threading_choice.recorded(1) is None
    threading_choice.record(1, "workqueue", {"omp": 0.02, "workqueue": 0.01})
    assert threading_choice.recorded_all()["1"]["layer"] == "workqueue" and threading_choice.recorded(2) == "omp"
    with pytest.raises(ValueError, match="must be one of workqueue, omp. Got 'tbb'"):
        threading_choice.record(2, "tbb", {})
    assert threading_choice.clear() == file and not file.exists()


def test_the_layer_file_does_not_depend_on_the_layer_and_the_kernel_file_does(cache, monkeypatch):
    monkeypatch.setenv("NUMBA_THREADING_LAYER", "workqueue")
    kernels_wq, layer_wq = kernel_cache.path(), threading_choice.path()
    monkeypatch.setenv("NUMBA_THREADING_LAYER", "omp")
    assert kernel_cache.machine_signature()["threading_layer"] == "omp"
    assert kernel_cache.path() != kernels_wq and threading_choice.path() == layer_wq


@pytest.mark.parametrize("content", ["{not json", json.dumps({"format": "other"}),
                                     json.dumps({"format": threading_choice.FORMAT, "version": threading_choice.VERSION,
                                                 "machine": {"cpu": "another"}, "choices": {"2": {"layer": "omp"}}})])
def test_a_file_of_another_format_or_machine_is_ignored(cache, content):
    file = threading_choice.path()
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(content)
    assert threading_choice.recorded(2) is None


def test_memory_only_keeps_nothing():
    assert threading_choice.path() is None and threading_choice.recorded(2) is None
    assert threading_choice.record(2, "omp", {"omp": 1.0}) is None


def test_measure_times_both_layers_in_child_processes_and_keeps_the_faster(cache):
    seen = []
    res = threading_choice.measure(1, repeats=1, rounds=2, size="quick", on_probe=lambda layer, got: seen.append(layer))
    assert seen == list(threading_choice.LAYERS)
    ran = res["median_s"]
    assert set(ran) | set(res["failed"]) == set(threading_choice.LAYERS) and "workqueue" in ran
    assert res["layer"] == min(ran, key=ran.get) and all(t > 0 for t in ran.values())
    assert threading_choice.recorded(1) == res["layer"] and res["file"] == threading_choice.path()


def test_a_layer_that_cannot_run_is_reported_and_left_out(cache, monkeypatch):
    def probe(layer, threads, rounds, size):
        if layer == "omp":
            raise RuntimeError("ValueError: No threading layer could be loaded.")
        return [0.01] * rounds

    monkeypatch.setattr(threading_choice, "probe", probe)
    res = threading_choice.measure(2, repeats=2, rounds=3)
    assert res["layer"] == "workqueue" and res["failed"] == {"omp": "ValueError: No threading layer could be loaded."}
    assert res["median_s"] == {"workqueue": 0.01} and threading_choice.recorded(2) == "workqueue"


CONFIGURE = """
import json
import sysarray.runtime as rt
t = rt.configure(threads=2)
import numba
print(json.dumps(dict(layer=t.numba_layer, origin=t.layer_from, numba=numba.config.THREADING_LAYER)))
"""


def _configured(tmp_path, **env) -> dict:
    clean = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    out = subprocess.run([sys.executable, "-c", CONFIGURE], capture_output=True, text=True, timeout=300,
                         env={**clean, "XDG_CACHE_HOME": str(tmp_path), **env})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_configure_takes_the_measured_layer_unless_the_user_set_one(cache):
    assert _configured(cache) == {"layer": "workqueue", "origin": "default", "numba": "workqueue"}
    threading_choice.record(2, "omp", {"omp": 0.03, "workqueue": 0.036})
    assert _configured(cache) == {"layer": "omp", "origin": "measured", "numba": "omp"}
    assert _configured(cache, NUMBA_THREADING_LAYER="workqueue") == \
        {"layer": "workqueue", "origin": "kept", "numba": "workqueue"}


# ------------------------------------------------------------------------------ sysarray kernels
def test_kernels_command_measures_shows_and_clears_the_layer(cache, capsys, monkeypatch):
    from tests.clitools import run_cli

    def probe(layer, threads, rounds, size):
        return [0.02 if layer == "omp" else 0.03] * rounds

    monkeypatch.setattr(threading_choice, "probe", probe)
    code, out, err = run_cli(["kernels", "--measure-layer", "--threads", "2", "--repeats", "1", "--quiet"], capsys)
    assert code == 0, err
    assert "omp        20.00 ms per probe round" in out and "2 thread(s): omp is faster here; kept in" in out
    code, out, _ = run_cli(["kernels"], capsys)
    assert code == 0 and "2 thread(s): omp (median ms per probe round: omp 20, workqueue 30)" in out
    code, out, _ = run_cli(["kernels", "--clear"], capsys)
    assert code == 0 and str(threading_choice.path()) in out and threading_choice.recorded(2) is None


def test_kernels_command_options_of_the_measurement_need_it(capsys):
    from tests.clitools import run_cli

    code, _, err = run_cli(["kernels", "--threads", "2"], capsys)
    assert code == 2 and err.count("\n") == 1 and "--threads and --repeats apply to --measure-layer." in err
