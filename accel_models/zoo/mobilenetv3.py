"""MobileNet-v3-Small (Howard et al. 2019, "Searching for MobileNetV3", arXiv:1905.02244).

A 3x3 conv stem (BN, hardswish), the paper's table 2 of bottleneck blocks, a 1x1 conv to six times
the last block's channels (BN, hardswish), global average pooling, then Linear-hardswish-Dropout-
Linear. A block is expand 1x1 conv + BN + activation (left out where the expansion keeps the
channels), depthwise k x k conv + BN + activation, optionally squeeze-and-excite (global average
pool, 1x1 conv, ReLU, 1x1 conv, hardsigmoid, multiplied into the features), then a linear 1x1
projection + BN, plus the input where the block keeps the shape. The activation is ReLU in the
early blocks and hardswish later. Channels are scaled by ``width`` and rounded to multiples of 8;
by default the last three blocks have half the channels (torchvision's ``reduced_tail``).

Small inputs: the stem has stride ``stem_stride``, by default the paper's 2 where the input's
smaller side is at least 16 and 1 below, and a stride-2 layer keeps its stride only while the side
is at least 2 (8x8 -> 8-4-2-1, 28x28 -> 14-7-4-2-1). The code follows torchvision's layout and
forward style.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from sysarray.validation import check_bool, check_float

from ._registry import check_input_shape, register_model
from .mobilenetv2 import ConvBNActivation, init_torchvision_weights, make_divisible, stem_stride_for, strided_side

# (kernel, expanded, out, squeeze-excite, activation "RE"/"HS", stride) per block, base channels
# 16 in: table 2 of the paper (MobileNetV3-Small); the last three blocks are its tail ("C4")
SMALL_SETTING = (
    (3, 16, 16, True, "RE", 2),
    (3, 72, 24, False, "RE", 2),
    (3, 88, 24, False, "RE", 1),
    (5, 96, 40, True, "HS", 2),
    (5, 240, 40, True, "HS", 1),
    (5, 240, 40, True, "HS", 1),
    (5, 120, 48, True, "HS", 1),
    (5, 144, 48, True, "HS", 1),
    (5, 288, 96, True, "HS", 2),
    (5, 576, 96, True, "HS", 1),
    (5, 576, 96, True, "HS", 1),
)


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excite (Hu et al. 2018, arXiv:1709.01507): ``x * gate(fc2(act(fc1(pool(x)))))``.

    ``scale_activation`` is the gate: hardsigmoid in MobileNet-v3, sigmoid in EfficientNet.
    """

    def __init__(
        self,
        input_channels: int,
        squeeze_channels: int,
        activation: Callable[[], nn.Module] = nn.ReLU,
        scale_activation: Callable[[], nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1)
        self.activation = activation()
        self.scale_activation = scale_activation()

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.avgpool(x)
        scale = self.fc1(scale)
        scale = self.activation(scale)
        scale = self.fc2(scale)
        return self.scale_activation(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self._scale(x)
        return scale * x


class PooledClassifier(nn.Module):
    """The forward torchvision's CNNs share: ``features``, ``avgpool``, ``torch.flatten(x, 1)``, ``classifier``."""

    features: nn.Module
    avgpool: nn.Module
    classifier: nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


class InvertedResidualSE(nn.Module):
    """MobileNet-v3's bottleneck: expand, depthwise, optional squeeze-excite, linear projection."""

    def __init__(self, input_channels: int, kernel: int, expanded_channels: int, out_channels: int,
                 use_se: bool, activation: str, stride: int) -> None:
        super().__init__()
        self.use_res_connect = stride == 1 and input_channels == out_channels
        act = nn.Hardswish if activation == "HS" else nn.ReLU
        layers: list[nn.Module] = []
        if expanded_channels != input_channels:
            layers.append(ConvBNActivation(input_channels, expanded_channels, kernel_size=1, activation_layer=act))
        layers.append(ConvBNActivation(expanded_channels, expanded_channels, kernel, stride,
                                       groups=expanded_channels, activation_layer=act))
        if use_se:
            squeeze = make_divisible(expanded_channels // 4, 8)
            layers.append(SqueezeExcitation(expanded_channels, squeeze, scale_activation=nn.Hardsigmoid))
        layers.append(ConvBNActivation(expanded_channels, out_channels, kernel_size=1, activation_layer=None))
        self.block = nn.Sequential(*layers)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.block(x)
        if self.use_res_connect:
            result += x  # in place, as torchvision writes it
        return result


@register_model("mobilenetv3")
class MobileNetV3(PooledClassifier):
    """``N x C x H x W`` float images -> ``N x num_classes`` logits.

    ``width``: channel multiplier of the blocks and the classifier's hidden layer (the paper's 1024
    times ``width``); ``stem_stride``: 1, 2 (the paper) or None (2 for inputs of at least 16 x 16,
    1 below); ``reduced_tail``: halve the last three blocks' and the classifier's channels, as
    torchvision's option does (CPU training costs a quarter less; the defaults have about 0.16 M
    weights, 0.41 M without it).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        width: float = 0.5,
        dropout: float = 0.2,
        stem_stride: int | None = None,
        reduced_tail: bool = True,
    ) -> None:
        super().__init__()
        (c, h, w), num_classes = check_input_shape(input_shape, num_classes, "mobilenetv3")
        width = check_float(width, "width", "mobilenetv3", lo=0.0, lo_open=True)
        dropout = check_float(dropout, "dropout", "mobilenetv3", lo=0.0, hi=1.0, hi_open=True)
        reduced_tail = check_bool(reduced_tail, "reduced_tail", "mobilenetv3")
        tail = len(SMALL_SETTING) - 3

        def adjust(channels: int, divider: int = 1) -> int:
            return make_divisible(channels // divider * width, 8)

        side = min(h, w)
        stride, side = strided_side(side, stem_stride_for(side, stem_stride, "mobilenetv3"))
        channels = adjust(16)
        layers: list[nn.Module] = [ConvBNActivation(c, channels, stride=stride, activation_layer=nn.Hardswish)]
        for i, (kernel, expanded, out, use_se, activation, s) in enumerate(SMALL_SETTING):
            divider = 2 if reduced_tail and i >= tail else 1  # torchvision's reduced_tail halves the tail
            stride, side = strided_side(side, s)
            layers.append(InvertedResidualSE(channels, kernel, adjust(expanded, divider), adjust(out, divider),
                                             use_se, activation, stride))
            channels = adjust(out, divider)
        last_conv = 6 * channels
        layers.append(ConvBNActivation(channels, last_conv, kernel_size=1, activation_layer=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        hidden = adjust(1024, 2 if reduced_tail else 1)
        self.classifier = nn.Sequential(
            nn.Linear(last_conv, hidden),
            nn.Hardswish(),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, num_classes),
        )
        init_torchvision_weights(self)
