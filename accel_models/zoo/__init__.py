"""The model zoo: plain float torch models, one per file, built by name.

Every model traces with ``torch.fx`` and ``torch.export`` and adapts to the dataset's
``input_shape`` (C, H, W) and ``num_classes``. mlp, lenet5, vgg11, alexnet and resnet20 use only
the layers the int8 lowering supports (Conv2d, Linear, BatchNorm2d, ReLU, MaxPool2d,
AdaptiveAvgPool2d, Flatten / ``flatten(1)``, residual add, Dropout); mobilenetv2 (depthwise convs,
ReLU6), mobilenetv3 (hardswish, squeeze-excite) and vit (LayerNorm, GELU, attention) are today's
architecture families to train and lower. ``accel_models.zoo.families`` holds untrained,
torchvision/timm-style builders of more families.

>>> model = build_model("lenet5", (1, 8, 8), 10)
>>> model.arch["name"], model.arch["kwargs"]
('lenet5', {'dropout': 0.0})
"""
from __future__ import annotations

from ._registry import MODELS, build_model, model_names, register_model
from .alexnet import AlexNet
from .lenet5 import LeNet5
from .mlp import MLP
from .mobilenetv2 import MobileNetV2
from .mobilenetv3 import MobileNetV3
from .resnet20 import BasicBlock, ResNet20
from .vgg11 import VGG11
from .vit import VisionTransformer

__all__ = [
    "MODELS",
    "build_model",
    "model_names",
    "register_model",
    "MLP",
    "LeNet5",
    "VGG11",
    "AlexNet",
    "ResNet20",
    "BasicBlock",
    "MobileNetV2",
    "MobileNetV3",
    "VisionTransformer",
]
