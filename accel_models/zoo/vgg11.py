"""VGG-11 with BatchNorm (Simonyan & Zisserman 2015, configuration "A"), channels scaled by ``width``.

Features: 3x3 conv (padding 1) + BN + ReLU blocks in five stages of 1, 1, 2, 2, 2 convs with
64, 128, 256, 512, 512 channels times ``width``, each stage followed by a 2x2 max pool while the
side is at least 2 (so 32x32 keeps all five pools, 28x28 four, 8x8 three; the last pools go
first). Classifier: Linear-ReLU-Dropout-Linear on the flattened features, as in the CIFAR VGGs.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sysarray.validation import check_float, check_positive_int

from ._registry import check_input_shape, pooled_size, register_model

_STAGES = ((64,), (128,), (256, 256), (512, 512), (512, 512))


@register_model("vgg11")
class VGG11(nn.Module):
    """``N x C x H x W`` float images -> ``N x num_classes`` logits.

    ``width`` scales every conv's channels (0.25 gives 16..128 channels, about 0.6 M weights,
    small enough to train on a CPU); ``hidden`` is the classifier's hidden width.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        width: float = 0.25,
        hidden: int = 128,
        dropout: float = 0.3,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        (c, h, w), num_classes = check_input_shape(input_shape, num_classes, "vgg11")
        width = check_float(width, "width", "vgg11", lo=0.0, lo_open=True)
        hidden = check_positive_int(hidden, "hidden", "vgg11")
        dropout = check_float(dropout, "dropout", "vgg11", lo=0.0, hi=1.0, hi_open=True)
        n_pools, _ = pooled_size(min(h, w), len(_STAGES))
        layers: list[nn.Module] = []
        channels = c
        for i, stage in enumerate(_STAGES):
            for base in stage:
                out_ch = max(1, round(base * width))
                layers.append(nn.Conv2d(channels, out_ch, kernel_size=3, padding=1, bias=not batch_norm))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(out_ch))
                layers.append(nn.ReLU())
                channels = out_ch
            if i < n_pools:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
        self.features = nn.Sequential(*layers)
        head: list[nn.Module] = [nn.Linear(channels * h * w, hidden), nn.ReLU()]
        if dropout > 0:
            head.append(nn.Dropout(dropout))
        head.append(nn.Linear(hidden, num_classes))
        self.classifier = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))
