"""The workload :mod:`sysarray.threading_choice` times under each candidate setting, run as
``python -m sysarray.threading_probe '[THREADS, ROUNDS, SIZE, SHORT_SPIN]'`` with
``NUMBA_THREADING_LAYER`` set (and ``GOMP_SPINCOUNT`` unset: SHORT_SPIN says whether the probe
sets the short spin of :data:`sysarray.runtime.SPIN_COUNT` or leaves libgomp's default).

One round is what an integer CNN does on a chip: a residual block in each of three ResNet-like
stages (16, 32 and 64 channels on 32x32, 16x16 and 8x8 maps, 3x3 convolutions) on a 32x32 WS chip
with 1% psum-faulty PEs (the fast engine's threaded numba replay and fix kernels), each
convolution followed by torch ops on its result (rescaling and clamping to codes, as
requantization does), the block by its residual add and a float32 torch convolution of the same
size (torch's own threads right after numba's). SIZE "full" runs batch 64, "quick" batch 4.
Prints the seconds of each round, after ``WARMUP`` untimed ones (the engines settle their measured
kernel choices in those), as one JSON list.
"""
from __future__ import annotations

import json
import os
import sys
import time

STAGES = ((16, 32), (32, 16), (64, 8))  # (channels, map size)
BATCH = {"full": 64, "quick": 4}
WARMUP = 10


def tune(threads: int, short_spin: bool):
    """The candidate's settings, whatever this machine has recorded: the spin set here, the
    ``NUMBA_THREADING_LAYER`` the parent set kept. Returns :func:`sysarray.runtime.configure`'s
    :class:`~sysarray.runtime.Tuning`."""
    import sysarray.runtime

    if short_spin:
        os.environ["GOMP_SPINCOUNT"] = str(sysarray.runtime.SPIN_COUNT)
    return sysarray.runtime.configure(threads=threads, omp_spin=False)


def main(argv: list[str]) -> int:
    threads, rounds, size, short_spin = json.loads(argv[0])
    tune(int(threads), bool(short_spin))
    import torch
    import torch.nn.functional as F

    import sysarray as sa

    cfg = sa.ArrayConfig(32, 32, "ws")
    chip = sa.Chip(cfg, sa.FaultMap.random(cfg, pe_rate=0.01, registers=("psum",), seed=0))
    gen = torch.Generator().manual_seed(0)
    batch = BATCH[size]
    stages = []
    for channels, side in STAGES:
        x = torch.randint(0, 256, (batch, channels, side, side), generator=gen).float()
        w = torch.randint(-127, 128, (channels, channels, 3, 3), generator=gen).float()
        stages.append((x.contiguous(memory_format=torch.channels_last), w))

    def requantized(acc: torch.Tensor) -> torch.Tensor:
        return (acc.float() * (1.0 / 4096)).round_().clamp_(0, 255)

    def one_round() -> None:
        for x, w in stages:  # a residual block: two chip convolutions and the add
            h = requantized(chip.conv2d(x, w, padding=(1, 1))[0])
            y = requantized(chip.conv2d(h, w, padding=(1, 1))[0])
            torch.add(y, x).clamp_(0, 255)
            F.conv2d(h, w * (1.0 / 128), padding=1)

    times = []
    for i in range(rounds + WARMUP):
        t0 = time.perf_counter()
        one_round()
        if i >= WARMUP:
            times.append(time.perf_counter() - t0)
    print(json.dumps(times))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
