"""MobileNet-v2 (Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear Bottlenecks", arXiv:1801.04381).

A 3x3 conv stem (BN, ReLU6), the seven inverted-residual stages of the paper's table 2 (by default
with fewer repeats, 10 blocks instead of 17; ``setting=INVERTED_RESIDUAL_SETTING`` gives the
paper's), a 1x1 conv to ``last_channel`` (BN, ReLU6), global average pooling, Dropout and one
Linear. An inverted residual is expand 1x1 conv + BN + ReLU6 (left out at expansion 1), depthwise
3x3 conv + BN + ReLU6, linear 1x1 projection + BN, plus the input where the block keeps the shape.
Channels are scaled by ``width`` and rounded to multiples of 8, as in the paper's code.

Small inputs: the stem has stride ``stem_stride``, by default the paper's 2 where the input's
smaller side is at least 16 and 1 below (the CIFAR adaptation, for 8x8 digits), and a stride-2
layer keeps its stride only while the side is at least 2, so the last downsamplings go first
(8x8 -> 8-4-2-1, 28x28 -> 14-7-4-2-1, 32x32 -> 16-8-4-2-1). The code follows torchvision's
layout (``features``, ``classifier``, functional pooling).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sysarray.validation import check_float, check_int, check_positive_int

from ._registry import check_input_shape, register_model

# (expansion t, base channels c, repeats n, first stride s) per stage: table 2 of the paper
INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
# the same stages with fewer repeats (10 blocks instead of 17): trains on a CPU in a few minutes
SMALL_SETTING = tuple((t, c, n, s) for (t, c, _, s), n in zip(INVERTED_RESIDUAL_SETTING, (1, 2, 2, 2, 1, 1, 1)))


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """``value`` rounded to a multiple of ``divisor`` (at least ``min_value``), never 10% below it.

    The channel rounding of the MobileNet papers' reference code.
    """
    min_value = divisor if min_value is None else min_value
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:  # rounding down must not lose more than 10%
        new += divisor
    return new


def stem_stride_for(side: int, stem_stride: int | None, where: str) -> int:
    """``stem_stride`` checked (1 or 2), or by default 2 for sides of at least 16 and 1 below."""
    if stem_stride is None:
        return 2 if side >= 16 else 1
    return check_int(stem_stride, "stem_stride", where, lo=1, hi=2)


def strided_side(side: int, stride: int) -> tuple[int, int]:
    """The stride a layer keeps on a side of ``side`` (2 only while the side is at least 2), and
    the side after a "same"-padded conv with it (``ceil(side / stride)``)."""
    stride = stride if side >= 2 else 1
    return stride, -(-side // stride)


class ConvBNActivation(nn.Sequential):
    """Conv2d (no bias, "same" padding) + BatchNorm2d + an optional activation (torchvision's
    ``Conv2dNormActivation``)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        activation_layer: Callable[[], nn.Module] | None = nn.ReLU6,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        if activation_layer is not None:
            layers.append(activation_layer())
        super().__init__(*layers)
        self.out_channels = out_channels


class InvertedResidual(nn.Module):
    """Expand 1x1 + depthwise 3x3 (ReLU6 after each), linear 1x1 projection, and the shortcut."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        self.stride = stride
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNActivation(inp, hidden_dim, kernel_size=1))
        layers += [
            ConvBNActivation(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim),  # depthwise
            nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),  # linear bottleneck: no activation
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


def init_torchvision_weights(model: nn.Module) -> None:
    """torchvision's init for its CNNs: Kaiming-normal (fan out) convs, unit BN, N(0, 0.01) Linear."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


@register_model("mobilenetv2")
class MobileNetV2(nn.Module):
    """``N x C x H x W`` float images -> ``N x num_classes`` logits.

    ``width``: channel multiplier (0.35 gives 8..112 block channels; with the defaults the model
    has about 0.15 M weights); ``last_channel``: the final 1x1 conv's channels (the paper's 1280);
    ``setting``: the (t, c, n, s) stage table; ``stem_stride``: 1, 2 (the paper) or None (2 for
    inputs of at least 16 x 16, 1 below).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        width: float = 0.35,
        last_channel: int = 256,
        dropout: float = 0.2,
        stem_stride: int | None = None,
        setting: Sequence[Sequence[int]] = SMALL_SETTING,
    ) -> None:
        super().__init__()
        (c, h, w), num_classes = check_input_shape(input_shape, num_classes, "mobilenetv2")
        width = check_float(width, "width", "mobilenetv2", lo=0.0, lo_open=True)
        last_channel = check_positive_int(last_channel, "last_channel", "mobilenetv2")
        dropout = check_float(dropout, "dropout", "mobilenetv2", lo=0.0, hi=1.0, hi_open=True)
        if not setting or any(len(row) != 4 or min(row) < 1 for row in setting):
            raise ValueError("The 'setting' argument of mobilenetv2 must be rows (t, c, n, s) of positive ints. "
                             f"Got {setting!r} instead.")
        side = min(h, w)
        stride, side = strided_side(side, stem_stride_for(side, stem_stride, "mobilenetv2"))
        input_channel = make_divisible(32 * width)
        features: list[nn.Module] = [ConvBNActivation(c, input_channel, stride=stride)]
        for t, base, n, s in setting:
            output_channel = make_divisible(base * width)
            for i in range(n):
                stride, side = strided_side(side, s if i == 0 else 1)
                features.append(InvertedResidual(input_channel, output_channel, stride, expand_ratio=t))
                input_channel = output_channel
        features.append(ConvBNActivation(input_channel, last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(last_channel, num_classes))
        init_torchvision_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = F.adaptive_avg_pool2d(x, (1, 1))  # functional pooling, as torchvision writes it
        x = torch.flatten(x, 1)
        return self.classifier(x)
