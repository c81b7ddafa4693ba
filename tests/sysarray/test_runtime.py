"""``sysarray.runtime``: process tuning happens only when asked for, and does what it says."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

CLEAN_ENV = {k: v for k, v in os.environ.items()
             if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "NUMBA_THREADING_LAYER")}


def _child(code: str, **env: str) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON object, returned here."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**CLEAN_ENV, **env},
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


CONFIGURE = """
import json, os
{before}
import sysarray.runtime as rt
t = rt.configure({args})
import numba
print(json.dumps(dict(spin=t.omp_spin, layer=t.numba_layer, malloc=t.malloc, threads=t.threads,
                      env=os.environ.get("GOMP_SPINCOUNT"), numba=numba.config.THREADING_LAYER)))
"""


def test_configure_without_a_measurement_leaves_the_spin_and_the_layer_to_their_libraries():
    got = _child(CONFIGURE.format(before="", args=""))
    assert got["spin"] == "default" and got["env"] is None
    assert got["layer"] == "default" and got["numba"] == "default"
    assert got["malloc"] is (sys.platform.startswith("linux"))
    assert got["threads"] is None


def test_configure_after_torch_says_the_spin_time_comes_too_late(tmp_path):
    short_spin = ("from sysarray import threading_choice, runtime\n"
                  "threading_choice.record(runtime.usable_cores(), 'omp/short', {'omp/short': 0.01})\n")
    before = _child(CONFIGURE.format(before=short_spin, args=""), XDG_CACHE_HOME=str(tmp_path))
    assert before["spin"] == "set" and before["env"] == "3000"
    got = _child(CONFIGURE.format(before=short_spin + "import torch", args=""), XDG_CACHE_HOME=str(tmp_path))
    assert got["spin"] == "late"


def test_configure_keeps_the_users_own_settings():
    got = _child(CONFIGURE.format(before="", args=""), GOMP_SPINCOUNT="1000", NUMBA_THREADING_LAYER="omp")
    assert got["spin"] == "kept" and got["env"] == "1000"
    assert got["layer"] == "omp" and got["numba"] == "omp"


def test_configure_can_leave_everything_and_set_threads():
    got = _child(CONFIGURE.format(before="", args="threads=1, omp_spin=False, numba_layer=False, malloc=False"))
    assert got["spin"] == "off" and got["env"] is None and got["layer"] == "off" and got["malloc"] is False
    assert got["threads"] == [1, 1]


def test_configure_rejects_bad_arguments():
    from sysarray.runtime import configure

    with pytest.raises(ValueError, match="'threads' argument of configure"):
        configure(threads=0, omp_spin=False, numba_layer=False, malloc=False)
    with pytest.raises(TypeError, match="'malloc' argument of configure must be True or False"):
        configure(malloc="yes")


def test_threads_context_restores_the_counts():
    import numba
    import torch

    from sysarray.runtime import threads

    before = torch.get_num_threads(), numba.get_num_threads()
    with threads(1):
        assert (torch.get_num_threads(), numba.get_num_threads()) == (1, 1)
    assert (torch.get_num_threads(), numba.get_num_threads()) == before


SHARED_COUNT = """
import json
import numpy as np
import numba
import sysarray.runtime as rt
import torch

@numba.njit(parallel=True)
def bump(a):
    for i in numba.prange(a.shape[0]):
        a[i] += 1

torch.get_num_threads()  # torch's threads in use before the counts are set
counts = rt.set_threads(1, numba_threads=2)
torch.get_num_threads()
try:
    bump(np.zeros(64))
    layer = numba.threading_layer()
except ValueError:  # this numba has no OpenMP layer here
    layer = None
print(json.dumps(dict(layer=layer, counts=counts, torch=torch.get_num_threads(), numba=numba.get_num_threads())))
"""


def test_set_threads_survives_numbas_openmp_layer():
    # numba's OpenMP layer and torch share libgomp's thread count: torch's must not turn into
    # numba's when numba's threads start
    got = _child(SHARED_COUNT, NUMBA_THREADING_LAYER="omp", NUMBA_NUM_THREADS="2")
    if got["layer"] != "omp":
        pytest.skip("numba's OpenMP threading layer is not available here")
    assert got["counts"] == [1, 2]
    assert (got["torch"], got["numba"]) == (1, 2)


PAGE_FAULTS = """
import json, resource
import numpy as np
{setup}
def run():
    for mb in (8, 24, 16, 30, 12):  # a network's layers: buffers of several sizes, freed each run
        a = np.ones(mb << 18, dtype=np.float32)
        del a
run()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    run()
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings (Linux)")
def test_configured_processes_reuse_freed_buffers_without_page_faults():
    from sysarray.runtime import keep_freed_memory

    if not keep_freed_memory():
        pytest.skip("not glibc: no mallopt")
    tuned = _child(PAGE_FAULTS.format(setup="import sysarray.runtime as rt; rt.configure(omp_spin=False, "
                                            "numba_layer=False)"))
    plain = _child(PAGE_FAULTS.format(setup="import sysarray, accel_models, mitigation"))
    # glibc's defaults fault about a thousand times here (its adaptive threshold absorbs some sizes,
    # not all); reused memory takes none
    assert tuned < 50 < plain
