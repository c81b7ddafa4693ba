"""``import sysarray`` after torch warns that torch's OpenMP spin time can no longer be set."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest


def _warns(order: str, **env: str) -> bool:
    """Whether importing in ``order`` (a child with two torch threads) raises ImportOrderWarning."""
    code = f"import warnings; warnings.simplefilter('error'); {order}; print('quiet')"
    base = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**base, "OMP_NUM_THREADS": "2", **env})
    if out.returncode == 0:
        assert out.stdout.strip() == "quiet"
        return False
    assert "ImportOrderWarning" in out.stderr and "GOMP_SPINCOUNT=3000" in out.stderr, out.stderr
    return True


@pytest.mark.parametrize("first", ["sysarray", "accel_models", "mitigation"])
def test_no_warning_when_imported_before_torch(first):
    assert not _warns(f"import {first}; import torch")


def test_warning_when_imported_after_torch():
    assert _warns("import torch; import sysarray")


def test_no_warning_when_the_spin_time_is_set_or_torch_has_one_thread():
    assert not _warns("import torch; import sysarray", GOMP_SPINCOUNT="1000")
    assert not _warns("import torch; import sysarray", OMP_WAIT_POLICY="passive")
    assert not _warns("import torch; torch.set_num_threads(1); import sysarray")
