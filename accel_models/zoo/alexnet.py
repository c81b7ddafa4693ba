"""An AlexNet-style CIFAR net (Krizhevsky et al. 2012, as adapted to 32x32 inputs).

Five convolutions (5x5, 5x5, 3x3, 3x3, 3x3; 64, 192, 384, 256, 256 channels times ``width``, all
stride 1 with "same" padding) with ReLU, a 2x2 max pool after conv1, conv2 and conv5 while the
side is at least 2 (32x32: 32-16-8-4, 28x28: 28-14-7-3, 8x8: 8-4-2-1), then the AlexNet head
Dropout-Linear-ReLU-Dropout-Linear-ReLU-Linear. The ImageNet stem (11x11 stride 4) and local
response normalisation are left out, as in the usual CIFAR versions; ``batch_norm`` optionally
puts a BatchNorm after each conv instead.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sysarray.validation import check_float, check_positive_int

from ._registry import check_input_shape, pooled_size, register_model

# (base channels, kernel size) per conv, grouped into the stages that end with a pool
_STAGES = (((64, 5),), ((192, 5),), ((384, 3), (256, 3), (256, 3)))


@register_model("alexnet")
class AlexNet(nn.Module):
    """``N x C x H x W`` float images -> ``N x num_classes`` logits."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        width: float = 0.25,
        hidden: int = 256,
        dropout: float = 0.3,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        (c, h, w), num_classes = check_input_shape(input_shape, num_classes, "alexnet")
        width = check_float(width, "width", "alexnet", lo=0.0, lo_open=True)
        hidden = check_positive_int(hidden, "hidden", "alexnet")
        dropout = check_float(dropout, "dropout", "alexnet", lo=0.0, hi=1.0, hi_open=True)
        n_pools, _ = pooled_size(min(h, w), len(_STAGES))
        layers: list[nn.Module] = []
        channels = c
        for i, stage in enumerate(_STAGES):
            for base, k in stage:
                out_ch = max(1, round(base * width))
                layers.append(nn.Conv2d(channels, out_ch, kernel_size=k, padding=k // 2, bias=not batch_norm))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(out_ch))
                layers.append(nn.ReLU())
                channels = out_ch
            if i < n_pools:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
        self.features = nn.Sequential(*layers)
        head: list[nn.Module] = []
        if dropout > 0:
            head.append(nn.Dropout(dropout))
        head += [nn.Linear(channels * h * w, hidden), nn.ReLU()]
        if dropout > 0:
            head.append(nn.Dropout(dropout))
        head += [nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)]
        self.classifier = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))
