"""Suite-wide settings: one torch thread for every test.

The models here are tiny, so intra-op threads only add contention: ``make test`` runs two workers
on two cores, and two threads per worker made small trainings 10-50x slower (OpenMP spinning).
One thread everywhere also makes the session fixtures' trained weights the same with and without
pytest-xdist. Campaign worker processes set their own thread counts.
"""
from __future__ import annotations


def pytest_configure(config) -> None:
    import torch

    torch.set_num_threads(1)
