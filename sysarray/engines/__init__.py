"""The two engines: ``cycle`` (numba clock loops, the reference) and ``fast`` (torch, exact).

numba's OpenMP threading layer keeps its threads spinning after a parallel loop, which steals
the cores from torch's own OpenMP GEMMs that follow (about +40% on a BLAS call here). The
workqueue layer does not spin; our parallel loops are coarse (folds, output rows), so it loses
nothing. Set before any parallel kernel runs; a user's explicit NUMBA_THREADING_LAYER wins.
"""
import os

import numba

if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"
