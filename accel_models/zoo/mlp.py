"""A multi-layer perceptron: flatten, hidden Linear+ReLU(+Dropout) layers, a Linear classifier."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sysarray.validation import check_float, check_positive_int, check_sequence

from ._registry import check_input_shape, register_model


@register_model("mlp")
class MLP(nn.Module):
    """``N x C x H x W`` float images -> ``N x num_classes`` logits.

    ``hidden``: widths of the hidden layers; ``dropout``: probability after each hidden ReLU
    (0 disables it; Dropout is dropped by the int8 lowering anyway).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        hidden: Sequence[int] = (128, 64),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        (c, h, w), num_classes = check_input_shape(input_shape, num_classes, "mlp")
        hidden = [check_positive_int(n, f"hidden[{i}]", "mlp")
                  for i, n in enumerate(check_sequence(hidden, "hidden", "mlp"))]
        dropout = check_float(dropout, "dropout", "mlp", lo=0.0, hi=1.0, hi_open=True)
        layers: list[nn.Module] = [nn.Flatten()]
        width = c * h * w
        for n in hidden:
            layers += [nn.Linear(width, int(n)), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = int(n)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
