"""The SIMD replay kernels at the lane width this machine does not pick (8 lanes on AVX-512 hosts,
16 elsewhere): other machines run that width, so its bits are checked here too, in a child
process with its own numba cache (the cache does not know the width)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sysarray.engines.simd import LANES

REPO = Path(__file__).resolve().parents[3]


def test_simd_kernels_at_the_other_lane_width_equal_the_pass_kernel_and_fast_gemm():
    other = 8 if LANES == 16 else 16
    env = {**os.environ, "SYSARRAY_SIMD_LANES": str(other),
           "NUMBA_CACHE_DIR": str(REPO / ".cache" / f"numba-lanes{other}")}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "simd and not vnni",
                        "tests/sysarray/engines/test_conv.py"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=1200)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and "skipped" not in r.stdout and "deselected" in r.stdout, r.stdout[-2000:]
