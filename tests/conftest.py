"""Suite-wide settings: one torch thread per pytest-xdist worker.

``make test`` runs two workers on two cores; letting each worker's torch use both cores
oversubscribes the machine, and OpenMP spinning then makes small training runs tens of times
slower. Tests that measure threading set their own counts.
"""
from __future__ import annotations

import os


def pytest_configure(config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
