"""ResNet-20 for CIFAR (He et al. 2016, "Deep Residual Learning", section 4.2).

A 3x3 conv stem (16 channels), three stages of three basic blocks with 16, 32, 64 channels
(stride 2 at the first block of stages 2 and 3), global average pooling and one Linear layer:
6n + 2 = 20 weight layers for n = 3 (19 convs and the fc on the main path). Where a block
changes the shape, the shortcut is option B of the paper, a 1x1 strided conv + BN projection;
these two extra convs are not counted in the 20, as in the paper. Every conv is followed by a
BatchNorm (no conv bias). ``base_width`` scales the 16/32/64 channels.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sysarray.validation import check_positive_int

from ._registry import check_input_shape, register_model


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_ch, out_ch, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu2 = nn.ReLU()  # one module per activation so clipping methods can set each threshold
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_ch),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + shortcut)


@register_model("resnet20")
class ResNet20(nn.Module):
    """``N x C x H x W`` float images -> ``N x num_classes`` logits."""

    blocks_per_stage = 3

    def __init__(self, input_shape: Sequence[int], num_classes: int, base_width: int = 16) -> None:
        super().__init__()
        (c, _, _), num_classes = check_input_shape(input_shape, num_classes, "resnet20")
        base_width = check_positive_int(base_width, "base_width", "resnet20")
        widths = (base_width, 2 * base_width, 4 * base_width)
        self.stem = nn.Sequential(
            nn.Conv2d(c, widths[0], kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
        )
        stages = []
        in_ch = widths[0]
        for i, out_ch in enumerate(widths):
            blocks = []
            for j in range(self.blocks_per_stage):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_ch, out_ch, stride))
                in_ch = out_ch
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x).flatten(1))
