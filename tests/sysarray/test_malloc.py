"""``sysarray._malloc``: freed activation-sized buffers are reused without page faults."""
from __future__ import annotations

import subprocess
import sys

import pytest

CHILD = """
import resource, sys
import numpy as np
import sysarray  # applies the settings (unless SYSARRAY_MALLOC_TUNING=0)
def run():
    for mb in (8, 24, 16, 30, 12):  # a network's layers: buffers of several sizes, freed each run
        a = np.ones(mb << 18, dtype=np.float32)
        del a
run()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    run()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults() -> int:
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings (Linux)")
def test_freed_buffers_are_reused_without_page_faults():
    from sysarray._malloc import keep_freed_memory

    if not keep_freed_memory():
        pytest.skip("not glibc: no mallopt")
    # glibc's defaults fault ~1,000 times here (its adaptive threshold absorbs some sizes, not all);
    # reused memory takes none
    assert _faults() < 50


def test_the_settings_can_be_turned_off(monkeypatch):
    from sysarray._malloc import keep_freed_memory

    monkeypatch.setenv("SYSARRAY_MALLOC_TUNING", "0")
    assert keep_freed_memory() is False
