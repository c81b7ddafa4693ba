"""A tiny lowered CNN for the remap and arithmetic-repair tests: a conv, a grouped conv and a
linear layer on digits (untrained, seeded: the tests check exactness, not accuracy)."""
from __future__ import annotations

import torch
import torch.nn as nn


class TinyCnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 8, 3, groups=2)
        self.fc = nn.Linear(8 * 6 * 6, 10)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c2(x))
        return self.fc(x.flatten(1))


def tiny_program(digits, seed: int = 0):
    from accel_models.lowering import lower

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TinyCnn().eval()
    return lower(model, digits.train_x[:64])
