"""LeNet-5 (LeCun et al. 1998) with ReLU and max pooling: conv6-pool-conv16-pool-fc120-fc84-fc.

A 5x5 convolution gets padding 2 ("same") where its input side is below the classic one at that
layer (32 for conv1, 14 for conv2), otherwise it is the original valid convolution: 32x32 CIFAR
runs the original sizes (32-28-14-10-5), 28x28 MNIST pads the first conv (28-28-14-10-5, the
usual MNIST LeNet), 8x8 digits pads both (8-8-4-4-2). A pool is skipped only where a side is 1.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sysarray.validation import check_float

from ._registry import check_input_shape, register_model


_CLASSIC_SIDES = (32, 14)  # input side of conv1 and conv2 in the original 32x32 LeNet-5


@register_model("lenet5")
class LeNet5(nn.Module):
    """``N x C x H x W`` float images -> ``N x num_classes`` logits."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        (c, h, w), num_classes = check_input_shape(input_shape, num_classes, "lenet5")
        dropout = check_float(dropout, "dropout", "lenet5", lo=0.0, hi=1.0, hi_open=True)
        feats: list[nn.Module] = []
        channels = c
        for out_ch, classic in zip((6, 16), _CLASSIC_SIDES):
            pad = (0 if h >= classic else 2, 0 if w >= classic else 2)
            feats += [nn.Conv2d(channels, out_ch, kernel_size=5, padding=pad), nn.ReLU()]
            h, w = h + 2 * pad[0] - 4, w + 2 * pad[1] - 4
            if h >= 2 and w >= 2:
                feats.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            channels = out_ch
        self.features = nn.Sequential(*feats)
        head: list[nn.Module] = [nn.Flatten(), nn.Linear(channels * h * w, 120), nn.ReLU()]
        if dropout > 0:
            head.append(nn.Dropout(dropout))
        head += [nn.Linear(120, 84), nn.ReLU()]
        if dropout > 0:
            head.append(nn.Dropout(dropout))
        head.append(nn.Linear(84, num_classes))
        self.classifier = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
