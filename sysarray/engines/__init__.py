"""The two engines: ``cycle`` (numba clock loops, the reference) and ``fast`` (torch, exact).

numba's OpenMP threading layer keeps its threads spinning after a parallel loop, which steals
the cores from torch's own OpenMP GEMMs that follow (about +40% on a BLAS call here). The
workqueue layer does not spin; our parallel loops are coarse (folds, output rows), so it loses
nothing. Set before any parallel kernel runs; a user's explicit NUMBA_THREADING_LAYER wins.
"""
import os

# Through the environment too: numba re-reads its whole config from the environment whenever a
# NUMBA_* variable changes after import, which would silently undo a config-only setting.
os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")

import numba  # noqa: E402

numba.config.THREADING_LAYER = os.environ["NUMBA_THREADING_LAYER"]
