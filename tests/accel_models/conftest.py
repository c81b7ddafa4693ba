"""Shared fixtures for the accel_models tests: the digits data and small float models trained on it.

Every model is written the ordinary way a user would (nested ``nn.Sequential`` blocks, BatchNorm,
``x.flatten(1)`` / ``x.view(n, -1)`` in ``forward``, functional ReLU after a residual add), trained
with a fixed seed for a few epochs (small, so the suite stays quick), and lowered once per session.
Nothing is written to disk, so the fixtures are safe under ``pytest -n``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

MIN_FLOAT_ACCURACY = 0.93


# --------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Digits:
    """float32 images N x 1 x 8 x 8 in [0, 1] and int64 labels."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def load_digits_split() -> Digits:
    """The project's digits split (``accel_models.data``), or a seeded 1437/360 split of sklearn's digits."""
    try:
        from accel_models.data import load_dataset
    except ImportError:
        load_dataset = None
    if load_dataset is not None:
        ds = load_dataset("digits")
        return Digits(ds.train_x, ds.train_y, ds.test_x, ds.test_y)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy((bunch.images / 16.0).astype(np.float32)[:, None])
    y = torch.from_numpy(bunch.target.astype(np.int64))
    perm = torch.from_numpy(np.random.default_rng(0).permutation(len(y)))
    train, test = perm[:1437], perm[1437:]
    return Digits(x[train], y[train], x[test], y[test])


# --------------------------------------------------------------------------- models (written the usual way)
class LeNet(nn.Module):
    """LeNet-5-like: conv-BN-ReLU-pool and conv-BN-pool-ReLU blocks in nested Sequentials, an MLP head.

    The second block pools before its ReLU (as the classic LeNet code does), so the ReLU is a
    stand-alone clamp on signed codes rather than one fused into the conv.
    """

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2)),
            nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.MaxPool2d(2), nn.ReLU()),
        )
        self.classifier = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, num_classes))

    def forward(self, x):
        x = self.features(x)
        x = x.flatten(1)
        return self.classifier(x)


class MLP(nn.Module):
    """An MLP with ``x.view(x.size(0), -1)``, a BatchNorm1d after a Linear and a ReLU6."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.fc1 = nn.Linear(64, 96)
        self.bn1 = nn.BatchNorm1d(96)
        self.fc2 = nn.Linear(96, 48)
        self.fc3 = nn.Linear(48, num_classes)

    def forward(self, x):
        x = x.view(x.size(0), -1)
        x = F.relu(self.bn1(self.fc1(x)))
        x = F.relu6(self.fc2(x))
        return self.fc3(x)


def sequential_mlp(num_classes: int = 10) -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, num_classes))


class ResidualBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus a 1x1-conv-BN shortcut, added, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.layer1 = ResidualBlock(8, 16)
        self.layer2 = ResidualBlock(16, 24, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(24, num_classes)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        x = self.pool(x)
        return self.fc(torch.flatten(x, 1))


class DepthwiseSeparable(nn.Module):
    """conv, a padded max pool, a depthwise (groups=channels) conv and a 1x1 conv, a padded avg pool."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU6())
        self.pool1 = nn.MaxPool2d(3, stride=2, padding=1)
        self.block = nn.Sequential(
            nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        )
        self.pool2 = nn.AvgPool2d(3, stride=2, padding=1)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.1), nn.Linear(32 * 2 * 2, num_classes))

    def forward(self, x):
        return self.head(self.pool2(self.block(self.pool1(self.stem(x)))))


# name -> (builder, epochs, learning rate)
MODEL_SPECS = {
    "lenet": (LeNet, 12, 3e-3),
    "mlp": (MLP, 12, 3e-3),
    "sequential": (sequential_mlp, 25, 3e-3),
    "resnet": (SmallResNet, 8, 3e-3),
    "dwsep": (DepthwiseSeparable, 15, 5e-3),
}
MODEL_NAMES = tuple(MODEL_SPECS)


def train(model: nn.Module, data: Digits, epochs: int, lr: float, seed: int = 0, batch_size: int = 64) -> nn.Module:
    """Plain seeded Adam training with a cosine schedule; returns the model in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    n = data.train_x.shape[0]
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            if idx.numel() < 2:
                continue  # BatchNorm needs two samples
            opt.zero_grad()
            F.cross_entropy(model(data.train_x[idx]), data.train_y[idx]).backward()
            opt.step()
        sched.step()
    return model.eval()


def float_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


@dataclass
class Fixture:
    """A trained float model, its lowered program and its float test results."""

    name: str
    model: nn.Module
    program: object
    float_pred: torch.Tensor
    float_acc: float
    train_seconds: float


@pytest.fixture(scope="session")
def digits() -> Digits:
    return load_digits_split()


@pytest.fixture(scope="session")
def zoo(digits) -> dict[str, Fixture]:
    """Every fixture model trained once per session (shared by all tests, as training dominates) and lowered."""
    from accel_models.lowering import lower

    out = {}
    for i, (name, (build, epochs, lr)) in enumerate(MODEL_SPECS.items()):
        t0 = time.perf_counter()
        torch.manual_seed(1000 + i)
        model = train(build(), digits, epochs, lr, seed=i)  # one torch thread (tests/conftest.py)
        pred = float_logits(model, digits.test_x).argmax(1)
        acc = float((pred == digits.test_y).double().mean())
        assert acc >= MIN_FLOAT_ACCURACY, f"fixture model {name} trained to only {acc:.3f} float accuracy"
        program = lower(model, digits.train_x)
        out[name] = Fixture(name, model, program, pred, acc, time.perf_counter() - t0)
    return out


@pytest.fixture(scope="session", params=MODEL_NAMES)
def fixture_model(request, zoo) -> Fixture:
    return zoo[request.param]
