"""Untrained, small-width but structurally faithful builders of today's CNN and transformer families.

Each builder ``fn(input_shape=(C, H, W), num_classes=10, **options) -> nn.Module`` returns a
randomly initialised model in eval mode, written with the module structure and forward code of the
original implementation (torchvision, timm or the paper's reference code): in-place residual adds,
one ReLU module applied twice, ``torch.cat`` of branches, ``torch.flatten(x, 1)``, ``x.mean((2, 3))``,
``F.adaptive_avg_pool2d``, channel shuffles with ``view`` / ``transpose``, ``permute`` to channels-last,
optional forward arguments and shape checks. Only the widths (and some depths) are cut, so that a
forward pass of 8 images takes milliseconds on a CPU. They exist to test and benchmark the lowering
of users' models to integer programs; ``torch.export.export(model, (x,))`` works for every one.

``FAMILIES`` maps each name to its builder; a builder's ``input_shape`` default is the input the
family is sized for (``default_input_shape``). Every family takes 3 x 64 x 64 and 3 x 32 x 32, and all
but vgg11_bn, convnext (their downsampling needs sides of at least 32) and densenet (29) take
1 x 28 x 28 too; a builder refuses a side its downsampling cannot take with a ValueError.
"""
from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import check_input_shape
from .mobilenetv2 import INVERTED_RESIDUAL_SETTING, ConvBNActivation, MobileNetV2, init_torchvision_weights, make_divisible
from .mobilenetv3 import MobileNetV3, PooledClassifier, SqueezeExcitation
from .vit import VisionTransformer, default_patch_size

Shape = Sequence[int]
FAMILIES: dict[str, Callable[..., nn.Module]] = {}


def _family(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    FAMILIES[fn.__name__] = fn
    return fn


def default_input_shape(name: str) -> tuple[int, int, int]:
    """The ``(C, H, W)`` family ``name`` is sized for: its builder's ``input_shape`` default."""
    if name not in FAMILIES:
        raise ValueError(f"Unknown family {name!r}. Known families: {', '.join(sorted(FAMILIES))}.")
    return tuple(inspect.signature(FAMILIES[name]).parameters["input_shape"].default)


def settle_batchnorm(model: nn.Module, images: torch.Tensor) -> nn.Module:
    """``model`` in eval mode with every BatchNorm's running statistics those of ``images`` (N, C,
    H, W), as training leaves them: untrained families then keep their activations' scale through
    depth instead of shrinking them layer by layer. Changes ``model`` in place and returns it."""
    for bn in model.modules():
        if isinstance(bn, nn.modules.batchnorm._BatchNorm):
            bn.momentum = 1.0
    model.train()
    with torch.no_grad():
        model(images)
    return model.eval()


def _check(input_shape: Shape, num_classes: int, where: str, min_side: int = 1) -> tuple[tuple[int, int, int], int]:
    """Validated ``(C, H, W)`` and ``num_classes``; ValueError where a side is below ``min_side``."""
    shape, num_classes = check_input_shape(input_shape, num_classes, where)
    if min(shape[1:]) < min_side:
        raise ValueError(f"{where} downsamples too often for {shape[1]} x {shape[2]} inputs: "
                         f"its sides must be at least {min_side}.")
    return shape, num_classes


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


# --------------------------------------------------------------------------- ResNet (torchvision)
def _conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, groups=groups, bias=False)


def _conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, ``out += identity``, ReLU: one ReLU module applied twice."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (with the stride: ResNet v1.5), 1x1 expand x4, each with BN; residual add, ReLU."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """torchvision's ResNet: 7x7/2 conv stem, BN, ReLU, 3x3/2 max pool, four stages, global pool, fc."""

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: Sequence[int], input_shape: Shape,
                 num_classes: int, width: int = 8, where: str = "resnet") -> None:
        super().__init__()
        (c, _, _), num_classes = _check(input_shape, num_classes, where)
        self.inplanes = width
        self.conv1 = nn.Conv2d(c, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, 2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * width, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * width * block.expansion, num_classes)
        init_torchvision_weights(self)

    def _make_layer(self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(_conv1x1(self.inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _stem_and_stages(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._stem_and_stages(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


class TimmStyleResNet(ResNet):
    """A ResNet with timm's forward split: ``forward_features`` checks ``x.ndim``, ``forward_head``
    pools with ``x.mean((2, 3))`` only when handed 4-d maps, applies functional dropout and returns
    the pooled features when ``pre_logits``."""

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: Sequence[int], input_shape: Shape,
                 num_classes: int, width: int = 8, drop_rate: float = 0.2) -> None:
        super().__init__(block, layers, input_shape, num_classes, width, where="timm_style_resnet")
        del self.avgpool  # timm pools in forward_head
        self.drop_rate = drop_rate
        self.num_features = self.fc.in_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        torch._assert(x.ndim == 4, f"Expected N x C x H x W images, got {x.ndim} dimensions.")
        return self._stem_and_stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if x.ndim == 4:  # feature maps pool to N x C; already pooled features pass through
            x = x.mean((2, 3))
        if self.drop_rate:
            x = F.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        return self.forward_head(x)


@_family
def resnet18(input_shape: Shape = (3, 64, 64), num_classes: int = 10, width: int = 8) -> nn.Module:
    """ResNet-18 (He et al. 2016, "Deep Residual Learning", arXiv:1512.03385): BasicBlocks (2, 2, 2, 2),
    ``width`` = the first stage's channels (64 in the paper); 3x64x64 -> 32-16-16-8-4-2 -> 1x1."""
    return ResNet(BasicBlock, (2, 2, 2, 2), input_shape, num_classes, width, where="resnet18").eval()


@_family
def resnet50(input_shape: Shape = (3, 64, 64), num_classes: int = 10, width: int = 4) -> nn.Module:
    """ResNet-50 (He et al. 2016, arXiv:1512.03385): Bottlenecks (3, 4, 6, 3) with expansion 4,
    ``width`` = the first stage's bottleneck channels (64 in the paper)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), input_shape, num_classes, width, where="resnet50").eval()


@_family
def timm_style_resnet(input_shape: Shape = (3, 64, 64), num_classes: int = 10, width: int = 8,
                      drop_rate: float = 0.2) -> nn.Module:
    """ResNet-18 (arXiv:1512.03385) written as timm writes its models (Wightman, pytorch-image-models):
    ``forward_features`` / ``forward_head(x, pre_logits=False)``, ``x.ndim`` read in forward."""
    return TimmStyleResNet(BasicBlock, (2, 2, 2, 2), input_shape, num_classes, width, drop_rate).eval()


# --------------------------------------------------------------------------- MobileNets, EfficientNet
@_family
def mobilenet_v2(input_shape: Shape = (3, 64, 64), num_classes: int = 10, width: float = 0.25) -> nn.Module:
    """MobileNet-v2 (Sandler et al. 2018, arXiv:1801.04381): the paper's 17 inverted residuals, stride-2
    stem, 1280-channel last conv; 3x64x64 -> 32-16-8-4-2. See ``accel_models.zoo.mobilenetv2``."""
    model = MobileNetV2(input_shape, num_classes, width=width, last_channel=1280, stem_stride=2,
                        setting=INVERTED_RESIDUAL_SETTING)
    return model.eval()


@_family
def mobilenet_v3(input_shape: Shape = (3, 64, 64), num_classes: int = 10, width: float = 0.5) -> nn.Module:
    """MobileNet-v3-Small (Howard et al. 2019, arXiv:1905.02244): hardswish, squeeze-excite with a
    hardsigmoid gate, depthwise 3x3/5x5; stride-2 stem. See ``accel_models.zoo.mobilenetv3``."""
    return MobileNetV3(input_shape, num_classes, width=width, stem_stride=2, reduced_tail=False).eval()


class StochasticDepth(nn.Module):
    """Stochastic depth (Huang et al. 2016, arXiv:1603.09382): in training, zero the residual branch
    of a random ``p`` of the samples ("row") or of the whole batch and rescale; identity in eval."""

    def __init__(self, p: float, mode: str = "row") -> None:
        super().__init__()
        self.p = p
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        survival_rate = 1.0 - self.p
        size = [x.shape[0]] + [1] * (x.ndim - 1) if self.mode == "row" else [1] * x.ndim
        noise = torch.empty(size, dtype=x.dtype, device=x.device).bernoulli_(survival_rate)
        if survival_rate > 0.0:
            noise.div_(survival_rate)
        return x * noise


class MBConv(nn.Module):
    """EfficientNet's block: expand 1x1, depthwise k x k (SiLU after each), squeeze-excite with a
    sigmoid gate, linear 1x1 projection; stochastic depth on the branch before the residual add."""

    def __init__(self, input_channels: int, expand_ratio: int, kernel: int, stride: int, out_channels: int,
                 stochastic_depth_prob: float) -> None:
        super().__init__()
        self.use_res_connect = stride == 1 and input_channels == out_channels
        expanded = make_divisible(input_channels * expand_ratio, 8)
        layers: list[nn.Module] = []
        if expanded != input_channels:
            layers.append(ConvBNActivation(input_channels, expanded, kernel_size=1, activation_layer=nn.SiLU))
        layers += [
            ConvBNActivation(expanded, expanded, kernel, stride, groups=expanded, activation_layer=nn.SiLU),
            SqueezeExcitation(expanded, max(1, input_channels // 4), activation=nn.SiLU),
            ConvBNActivation(expanded, out_channels, kernel_size=1, activation_layer=None),
        ]
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, "row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.block(x)
        if self.use_res_connect:
            result = self.stochastic_depth(result)
            result += x
        return result


# (expand ratio, kernel, stride, in channels, out channels, layers): table 1 of the EfficientNet paper
_EFFICIENTNET_B0 = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)


class EfficientNet(PooledClassifier):
    """torchvision's EfficientNet: 3x3/2 stem, MBConv stages, 1x1 conv to 4x the last channels,
    global pool, Dropout, Linear; the stochastic depth rises linearly over the blocks."""

    def __init__(self, input_shape: Shape, num_classes: int, width: float, dropout: float = 0.2,
                 stochastic_depth_prob: float = 0.2) -> None:
        super().__init__()
        (c, _, _), num_classes = _check(input_shape, num_classes, "efficientnet_b0")

        def adjust(channels: int) -> int:
            return make_divisible(channels * width, 8)

        layers: list[nn.Module] = [ConvBNActivation(c, adjust(32), stride=2, activation_layer=nn.SiLU)]
        total_blocks = sum(row[-1] for row in _EFFICIENTNET_B0)
        block_id = 0
        for expand, kernel, stride, cin, cout, n in _EFFICIENTNET_B0:
            stage: list[nn.Module] = []
            for i in range(n):
                sd_prob = stochastic_depth_prob * block_id / total_blocks
                stage.append(MBConv(adjust(cin if i == 0 else cout), expand, kernel, stride if i == 0 else 1,
                                    adjust(cout), sd_prob))
                block_id += 1
            layers.append(nn.Sequential(*stage))
        last_in = adjust(_EFFICIENTNET_B0[-1][4])
        layers.append(ConvBNActivation(last_in, 4 * last_in, kernel_size=1, activation_layer=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout, inplace=True), nn.Linear(4 * last_in, num_classes))
        init_torchvision_weights(self)


@_family
def efficientnet_b0(input_shape: Shape = (3, 64, 64), num_classes: int = 10, width: float = 0.25) -> nn.Module:
    """EfficientNet-B0 (Tan & Le 2019, arXiv:1905.11946): SiLU, MBConv with a sigmoid squeeze-excite,
    stochastic depth (identity in eval), Dropout head; all 16 blocks, channels times ``width``."""
    return EfficientNet(input_shape, num_classes, width).eval()


# --------------------------------------------------------------------------- RegNet, VGG
class ResBottleneckBlock(nn.Module):
    """RegNet's X block: 1x1-BN-ReLU, 3x3 group conv (stride)-BN-ReLU, 1x1-BN, a projection shortcut
    where the shape changes, ``proj(x) + f(x)``, ReLU."""

    def __init__(self, width_in: int, width_out: int, stride: int, group_width: int) -> None:
        super().__init__()
        self.proj = None
        if width_in != width_out or stride != 1:
            self.proj = ConvBNActivation(width_in, width_out, kernel_size=1, stride=stride, activation_layer=None)
        self.f = nn.Sequential(OrderedDict(
            a=ConvBNActivation(width_in, width_out, kernel_size=1, activation_layer=nn.ReLU),
            b=ConvBNActivation(width_out, width_out, stride=stride, groups=width_out // group_width,
                               activation_layer=nn.ReLU),
            c=ConvBNActivation(width_out, width_out, kernel_size=1, activation_layer=None),
        ))
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.proj is not None:
            x = self.proj(x) + self.f(x)
        else:
            x = x + self.f(x)
        return self.activation(x)


class RegNet(nn.Module):
    """torchvision's RegNet: 3x3/2 stem, stages of ResBottleneckBlocks (stride 2 first), pool, fc."""

    def __init__(self, input_shape: Shape, num_classes: int, stem_width: int, widths: Sequence[int],
                 depths: Sequence[int], group_width: int) -> None:
        super().__init__()
        (c, _, _), num_classes = _check(input_shape, num_classes, "regnet_x")
        self.stem = ConvBNActivation(c, stem_width, stride=2, activation_layer=nn.ReLU)
        stages: list[tuple[str, nn.Module]] = []
        current = stem_width
        for i, (width, depth) in enumerate(zip(widths, depths), start=1):
            blocks = OrderedDict((f"block{i}-{j}", ResBottleneckBlock(current if j == 0 else width, width,
                                                                      2 if j == 0 else 1, group_width))
                                 for j in range(depth))
            stages.append((f"block{i}", nn.Sequential(blocks)))
            current = width
        self.trunk_output = nn.Sequential(OrderedDict(stages))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(current, num_classes)
        init_torchvision_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.trunk_output(x)
        x = self.avgpool(x)
        x = x.flatten(start_dim=1)
        return self.fc(x)


@_family
def regnet_x(input_shape: Shape = (3, 64, 64), num_classes: int = 10, group_width: int = 8) -> nn.Module:
    """RegNetX (Radosavovic et al. 2020, "Designing Network Design Spaces", arXiv:2003.13678): the
    200MF depths (1, 1, 4, 7) with widths 16, 32, 64, 128 in group convs of ``group_width`` channels."""
    return RegNet(input_shape, num_classes, 16, (16, 32, 64, 128), (1, 1, 4, 7), group_width).eval()


_VGG_A = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")  # VGG-11, configuration A


class VGG(PooledClassifier):
    """torchvision's VGG: ``features``, ``AdaptiveAvgPool2d((7, 7))``, a 3-layer classifier."""

    def __init__(self, features: nn.Module, channels: int, num_classes: int, hidden: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(channels * 7 * 7, hidden),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, num_classes),
        )
        init_torchvision_weights(self)


@_family
def vgg11_bn(input_shape: Shape = (3, 64, 64), num_classes: int = 10, width: float = 1 / 16, hidden: int = 64) -> nn.Module:
    """VGG-11 with BatchNorm (Simonyan & Zisserman 2015, arXiv:1409.1556; BN as torchvision adds it):
    conv-BN-ReLU, five 2x2 max pools, then (7, 7) adaptive pooling of the 2x2 map (3x64x64) or 1x1
    map (3x32x32), a size that does not divide it. Sides must be at least 32."""
    (c, _, _), num_classes = _check(input_shape, num_classes, "vgg11_bn", min_side=32)
    layers: list[nn.Module] = []
    channels = c
    for v in _VGG_A:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            out = _scaled(v, width)
            layers += [nn.Conv2d(channels, out, kernel_size=3, padding=1), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            channels = out
    return VGG(nn.Sequential(*layers), channels, num_classes, hidden).eval()


# --------------------------------------------------------------------------- SqueezeNet, GoogLeNet
class Fire(nn.Module):
    """SqueezeNet's Fire module: 1x1 squeeze-ReLU, then ``torch.cat`` of 1x1 and 3x3 expands (ReLU each)."""

    def __init__(self, inplanes: int, squeeze_planes: int, expand1x1_planes: int, expand3x3_planes: int) -> None:
        super().__init__()
        self.inplanes = inplanes
        self.squeeze = nn.Conv2d(inplanes, squeeze_planes, kernel_size=1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze_planes, expand1x1_planes, kernel_size=1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze_planes, expand3x3_planes, kernel_size=3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat(
            [self.expand1x1_activation(self.expand1x1(x)), self.expand3x3_activation(self.expand3x3(x))], 1
        )


# SqueezeNet 1.1: (squeeze, expand) per Fire module, "M" a 3x3/2 ceil-mode max pool
_SQUEEZENET_1_1 = ((16, 64), (16, 64), "M", (32, 128), (32, 128), "M", (48, 192), (48, 192), (64, 256), (64, 256))


class SqueezeNet(nn.Module):
    """torchvision's SqueezeNet 1.1: 3x3/2 conv, ceil-mode max pools between Fire modules, and a
    classifier of Dropout, a 1x1 conv to the classes, ReLU and ``AdaptiveAvgPool2d((1, 1))``."""

    def __init__(self, input_shape: Shape, num_classes: int, width: float, dropout: float = 0.5) -> None:
        super().__init__()
        (c, _, _), num_classes = _check(input_shape, num_classes, "squeezenet", min_side=17)
        channels = _scaled(64, width)
        layers: list[nn.Module] = [nn.Conv2d(c, channels, kernel_size=3, stride=2), nn.ReLU(inplace=True),
                                   nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)]
        for item in _SQUEEZENET_1_1:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True))
            else:
                squeeze, expand = _scaled(item[0], width), _scaled(item[1], width)
                layers.append(Fire(channels, squeeze, expand, expand))
                channels = 2 * expand
        self.features = nn.Sequential(*layers)
        final_conv = nn.Conv2d(channels, num_classes, kernel_size=1)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), final_conv, nn.ReLU(inplace=True),
                                        nn.AdaptiveAvgPool2d((1, 1)))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if m is final_conv:
                    nn.init.normal_(m.weight, mean=0.0, std=0.01)
                else:
                    nn.init.kaiming_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.classifier(x)
        return torch.flatten(x, 1)


@_family
def squeezenet(input_shape: Shape = (3, 64, 64), num_classes: int = 10, width: float = 0.125) -> nn.Module:
    """SqueezeNet 1.1 (Iandola et al. 2016, arXiv:1602.07360; v1.1 from the authors' repository):
    Fire modules concatenating two expands, ``MaxPool2d(ceil_mode=True)``; sides at least 17."""
    return SqueezeNet(input_shape, num_classes, width).eval()


class BasicConv2d(nn.Module):
    """Conv (no bias) + BN (eps 1e-3), then a functional in-place ReLU, as torchvision's GoogLeNet."""

    def __init__(self, in_channels: int, out_channels: int, **kwargs: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        x = self.bn(x)
        return F.relu(x, inplace=True)


class Inception(nn.Module):
    """Four branches concatenated: 1x1; 1x1 -> 3x3; 1x1 -> 5x5 (the paper's; torchvision has 3x3);
    3x3/1 ceil-mode max pool -> 1x1."""

    def __init__(self, in_channels: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int, ch5x5: int,
                 pool_proj: int) -> None:
        super().__init__()
        self.branch1 = BasicConv2d(in_channels, ch1x1, kernel_size=1)
        self.branch2 = nn.Sequential(BasicConv2d(in_channels, ch3x3red, kernel_size=1),
                                     BasicConv2d(ch3x3red, ch3x3, kernel_size=3, padding=1))
        self.branch3 = nn.Sequential(BasicConv2d(in_channels, ch5x5red, kernel_size=1),
                                     BasicConv2d(ch5x5red, ch5x5, kernel_size=5, padding=2))
        self.branch4 = nn.Sequential(nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
                                     BasicConv2d(in_channels, pool_proj, kernel_size=1))
        self.out_channels = ch1x1 + ch3x3 + ch5x5 + pool_proj

    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = self._forward(x)
        return torch.cat(outputs, 1)


# (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj): table 1 of the GoogLeNet paper
_INCEPTIONS = {
    "3a": (64, 96, 128, 16, 32, 32), "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64), "4b": (160, 112, 224, 24, 64, 64), "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64), "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128), "5b": (384, 192, 384, 48, 128, 128),
}


class GoogLeNet(nn.Module):
    """torchvision's GoogLeNet without the auxiliary classifiers (used only in training) and the
    input transform: BN instead of the paper's local response normalisation."""

    def __init__(self, input_shape: Shape, num_classes: int, width: float, dropout: float = 0.2) -> None:
        super().__init__()
        (c, _, _), num_classes = _check(input_shape, num_classes, "googlenet", min_side=15)
        self.conv1 = BasicConv2d(c, _scaled(64, width), kernel_size=7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = BasicConv2d(_scaled(64, width), _scaled(64, width), kernel_size=1)
        self.conv3 = BasicConv2d(_scaled(64, width), _scaled(192, width), kernel_size=3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        channels = _scaled(192, width)
        for name, cfg in _INCEPTIONS.items():
            block = Inception(channels, *(_scaled(v, width) for v in cfg))
            setattr(self, f"inception{name}", block)
            channels = block.out_channels
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(channels, num_classes)
        init_torchvision_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool1(self.conv1(x))  # N x 64 x H/4 x W/4 at full width
        x = self.maxpool2(self.conv3(self.conv2(x)))
        x = self.inception3b(self.inception3a(x))
        x = self.maxpool3(x)
        x = self.inception4a(x)
        x = self.inception4b(x)
        x = self.inception4c(x)
        x = self.inception4d(x)
        x = self.inception4e(x)
        x = self.maxpool4(x)
        x = self.inception5b(self.inception5a(x))
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.dropout(x)
        return self.fc(x)


@_family
def googlenet(input_shape: Shape = (3, 64, 64), num_classes: int = 10, width: float = 0.125) -> nn.Module:
    """GoogLeNet / Inception-v1 (Szegedy et al. 2014, "Going Deeper with Convolutions", arXiv:1409.4842):
    nine Inception modules concatenating four branches, ceil-mode max pools; 3x64x64 -> 16-8-4-2;
    sides at least 15."""
    return GoogLeNet(input_shape, num_classes, width).eval()


# --------------------------------------------------------------------------- DenseNet, ShuffleNet
class _DenseLayer(nn.Module):
    """BN-ReLU-conv1x1 (``bn_size`` x growth), BN-ReLU-conv3x3 (growth) on the concatenated inputs."""

    def __init__(self, num_input_features: int, growth_rate: int, bn_size: int, drop_rate: float) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(num_input_features)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(num_input_features, bn_size * growth_rate, kernel_size=1, stride=1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = float(drop_rate)

    def bn_function(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        concated_features = torch.cat(inputs, 1)
        return self.conv1(self.relu1(self.norm1(concated_features)))

    def forward(self, x: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        prev_features = [x] if isinstance(x, torch.Tensor) else x
        bottleneck_output = self.bn_function(prev_features)
        new_features = self.conv2(self.relu2(self.norm2(bottleneck_output)))
        if self.drop_rate > 0:
            new_features = F.dropout(new_features, p=self.drop_rate, training=self.training)
        return new_features


class _DenseBlock(nn.ModuleDict):
    """Each layer sees the concatenation of the block's input and every earlier layer's output."""

    def __init__(self, num_layers: int, num_input_features: int, bn_size: int, growth_rate: int, drop_rate: float) -> None:
        super().__init__()
        for i in range(num_layers):
            layer = _DenseLayer(num_input_features + i * growth_rate, growth_rate, bn_size, drop_rate)
            self.add_module(f"denselayer{i + 1}", layer)

    def forward(self, init_features: torch.Tensor) -> torch.Tensor:
        features = [init_features]
        for _, layer in self.items():
            new_features = layer(features)
            features.append(new_features)
        return torch.cat(features, 1)


class _Transition(nn.Sequential):
    """BN, ReLU, 1x1 conv halving the channels, 2x2 average pool."""

    def __init__(self, num_input_features: int, num_output_features: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(num_input_features)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(num_input_features, num_output_features, kernel_size=1, stride=1, bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


class DenseNet(nn.Module):
    """torchvision's DenseNet: 7x7/2 conv, BN, ReLU, 3x3/2 max pool, dense blocks and transitions,
    a final BN, then functional ReLU, ``F.adaptive_avg_pool2d`` and a Linear."""

    def __init__(self, input_shape: Shape, num_classes: int, growth_rate: int, block_config: Sequence[int],
                 num_init_features: int, bn_size: int = 4, drop_rate: float = 0.0) -> None:
        super().__init__()
        (c, _, _), num_classes = _check(input_shape, num_classes, "densenet", min_side=29)
        self.features = nn.Sequential(OrderedDict([
            ("conv0", nn.Conv2d(c, num_init_features, kernel_size=7, stride=2, padding=3, bias=False)),
            ("norm0", nn.BatchNorm2d(num_init_features)),
            ("relu0", nn.ReLU(inplace=True)),
            ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
        ]))
        num_features = num_init_features
        for i, num_layers in enumerate(block_config):
            block = _DenseBlock(num_layers, num_features, bn_size, growth_rate, drop_rate)
            self.features.add_module(f"denseblock{i + 1}", block)
            num_features += num_layers * growth_rate
            if i != len(block_config) - 1:
                self.features.add_module(f"transition{i + 1}", _Transition(num_features, num_features // 2))
                num_features //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(num_features))  # BN after a concatenation, not a conv
        self.classifier = nn.Linear(num_features, num_classes)
        init_torchvision_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        out = F.relu(features, inplace=True)
        out = F.adaptive_avg_pool2d(out, (1, 1))
        out = torch.flatten(out, 1)
        return self.classifier(out)


@_family
def densenet(input_shape: Shape = (3, 64, 64), num_classes: int = 10, growth_rate: int = 8) -> nn.Module:
    """DenseNet-121's structure (Huang et al. 2016, "Densely Connected Convolutional Networks",
    arXiv:1608.06993) with blocks of (3, 6, 12, 8) layers: BN-ReLU-conv order, concatenated features,
    average-pool transitions. Sides must be at least 29 (three transitions after a /4 stem)."""
    return DenseNet(input_shape, num_classes, growth_rate, (3, 6, 12, 8), num_init_features=16).eval()


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of ``groups`` groups: view as groups x C/groups, transpose, flatten."""
    batchsize, num_channels, height, width = x.size()
    channels_per_group = num_channels // groups
    x = x.view(batchsize, groups, channels_per_group, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return torch.flatten(x, 1, 2)


class ShuffleUnit(nn.Module):
    """ShuffleNet-v2's unit: stride 1 splits the channels with ``chunk`` and convolves one half; stride 2
    convolves the input in two branches; the halves are concatenated and shuffled."""

    def __init__(self, inp: int, oup: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        branch_features = oup // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
                nn.BatchNorm2d(inp),
                nn.Conv2d(inp, branch_features, kernel_size=1, bias=False),
                nn.BatchNorm2d(branch_features),
                nn.ReLU(inplace=True),
            )
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            nn.Conv2d(inp if stride > 1 else branch_features, branch_features, kernel_size=1, bias=False),
            nn.BatchNorm2d(branch_features),
            nn.ReLU(inplace=True),
            nn.Conv2d(branch_features, branch_features, 3, stride, 1, groups=branch_features, bias=False),
            nn.BatchNorm2d(branch_features),
            nn.Conv2d(branch_features, branch_features, kernel_size=1, bias=False),
            nn.BatchNorm2d(branch_features),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    """torchvision's ShuffleNetV2: 3x3/2 conv, 3x3/2 max pool, three stages, 1x1 conv, ``x.mean([2, 3])``, fc."""

    def __init__(self, input_shape: Shape, num_classes: int, stages_repeats: Sequence[int],
                 stages_out_channels: Sequence[int]) -> None:
        super().__init__()
        (c, _, _), num_classes = _check(input_shape, num_classes, "shufflenet_v2")
        output_channels = stages_out_channels[0]
        self.conv1 = nn.Sequential(nn.Conv2d(c, output_channels, 3, 2, 1, bias=False),
                                   nn.BatchNorm2d(output_channels), nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        input_channels = output_channels
        for name, repeats, output_channels in zip(("stage2", "stage3", "stage4"), stages_repeats, stages_out_channels[1:]):
            seq = [ShuffleUnit(input_channels, output_channels, 2)]
            seq += [ShuffleUnit(output_channels, output_channels, 1) for _ in range(repeats - 1)]
            setattr(self, name, nn.Sequential(*seq))
            input_channels = output_channels
        output_channels = stages_out_channels[-1]
        self.conv5 = nn.Sequential(nn.Conv2d(input_channels, output_channels, 1, 1, 0, bias=False),
                                   nn.BatchNorm2d(output_channels), nn.ReLU(inplace=True))
        self.fc = nn.Linear(output_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.maxpool(x)
        x = self.stage2(x)
        x = self.stage3(x)
        x = self.stage4(x)
        x = self.conv5(x)
        x = x.mean([2, 3])  # global average pool
        return self.fc(x)


@_family
def shufflenet_v2(input_shape: Shape = (3, 64, 64), num_classes: int = 10) -> nn.Module:
    """ShuffleNet-v2 (Ma et al. 2018, arXiv:1807.11164): stage repeats (4, 8, 4) as in the paper, channels
    8, 16, 32, 64, 128 (the paper's 0.5x has 24, 48, 96, 192, 1024)."""
    return ShuffleNetV2(input_shape, num_classes, (4, 8, 4), (8, 16, 32, 64, 128)).eval()


# --------------------------------------------------------------------------- ConvNeXt
class LayerNorm(nn.Module):
    """The ConvNeXt code's LayerNorm: ``F.layer_norm`` over the last dim ("channels_last"), or written
    out over dim 1 of N x C x H x W ("channels_first")."""

    def __init__(self, normalized_shape: int, eps: float = 1e-6, data_format: str = "channels_last") -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))
        self.eps = eps
        self.data_format = data_format
        self.normalized_shape = (normalized_shape,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.data_format == "channels_last":
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 conv, permute to N x H x W x C, LayerNorm, Linear 4x, GELU, Linear, layer scale
    ``gamma * x``, permute back, residual add (through stochastic depth)."""

    def __init__(self, dim: int, drop_path: float = 0.0, layer_scale_init_value: float = 1e-6) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)  # a 1x1 conv, as a Linear on channels-last tokens
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(layer_scale_init_value * torch.ones(dim)) if layer_scale_init_value > 0 else None
        self.drop_path = StochasticDepth(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.dwconv(x)
        x = x.permute(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
        x = self.norm(x)
        x = self.pwconv1(x)
        x = self.act(x)
        x = self.pwconv2(x)
        if self.gamma is not None:
            x = self.gamma * x
        x = x.permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
        return shortcut + self.drop_path(x)


class ConvNeXt(nn.Module):
    """The ConvNeXt reference model: a 4x4/4 patchify stem + channels-first LayerNorm, stages
    separated by LayerNorm + 2x2/2 conv, global average, LayerNorm, Linear head."""

    def __init__(self, input_shape: Shape, num_classes: int, depths: Sequence[int], dims: Sequence[int],
                 drop_path_rate: float = 0.1, layer_scale_init_value: float = 1e-6) -> None:
        super().__init__()
        (c, _, _), num_classes = _check(input_shape, num_classes, "convnext", min_side=32)
        self.downsample_layers = nn.ModuleList([nn.Sequential(
            nn.Conv2d(c, dims[0], kernel_size=4, stride=4), LayerNorm(dims[0], eps=1e-6, data_format="channels_first"))])
        for i in range(len(dims) - 1):
            self.downsample_layers.append(nn.Sequential(
                LayerNorm(dims[i], eps=1e-6, data_format="channels_first"),
                nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2)))
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.stages = nn.ModuleList()
        cur = 0
        for depth, dim in zip(depths, dims):
            self.stages.append(nn.Sequential(*[ConvNeXtBlock(dim, rates[cur + j], layer_scale_init_value)
                                               for j in range(depth)]))
            cur += depth
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for downsample, stage in zip(self.downsample_layers, self.stages):
            x = stage(downsample(x))
        return self.norm(x.mean([-2, -1]))  # global average pooling, (N, C, H, W) -> (N, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        return self.head(x)


@_family
def convnext(input_shape: Shape = (3, 64, 64), num_classes: int = 10, layer_scale_init_value: float = 1e-6) -> nn.Module:
    """ConvNeXt (Liu et al. 2022, "A ConvNet for the 2020s", arXiv:2201.03545): ConvNeXt-T's 1:1:3:1
    stage ratio as depths (2, 2, 6, 2), dims 8, 16, 32, 64; sides must be at least 32 (/32 in all)."""
    return ConvNeXt(input_shape, num_classes, (2, 2, 6, 2), (8, 16, 32, 64),
                    layer_scale_init_value=layer_scale_init_value).eval()


# --------------------------------------------------------------------------- ViT, DeiT
class DistilledVisionTransformer(VisionTransformer):
    """DeiT's distilled ViT: a distillation token after the class token, a second head on it; eval
    returns the average of the two heads' logits (training returns both when ``distilled_training``)."""

    num_prefix_tokens = 2

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.dist_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim))
        nn.init.trunc_normal_(self.dist_token, std=0.02)
        self.head_dist = nn.Linear(self.embed_dim, self.head.out_features)
        self.distilled_training = False

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), self.dist_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + self.pos_embed
        return self.pos_drop(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x, x_dist = x[:, 0], x[:, 1]
        if pre_logits:
            return (x + x_dist) / 2
        x = self.head(x)
        x_dist = self.head_dist(x_dist)
        if self.distilled_training and self.training and not torch.jit.is_scripting():
            return x, x_dist  # type: ignore[return-value]  # the teacher's loss needs both
        return (x + x_dist) / 2


def _patch(input_shape: Shape, patch_size: int | None) -> int | None:
    """``patch_size``, or by default 8, 4 or 2 for a grid of at least 7 patches a side (64: 8, 32: 4, 28: 4)."""
    if patch_size is not None or len(input_shape) != 3:
        return patch_size  # the model checks it (and the shape)
    return default_patch_size(int(input_shape[1]), int(input_shape[2]), sizes=(8, 4, 2), min_grid=7)


@_family
def vit(input_shape: Shape = (3, 32, 32), num_classes: int = 10, patch_size: int | None = None,
        embed_dim: int = 64, depth: int = 4, num_heads: int = 4, fused_attn: bool = False) -> nn.Module:
    """ViT (Dosovitskiy et al. 2020, arXiv:2010.11929) as timm writes it, MLP ratio 4; attention with
    explicit matmuls and softmax (``fused_attn=True``: ``F.scaled_dot_product_attention``). 3x32x32:
    8 x 8 patches of 4 x 4, 65 tokens; 3x64x64: patches of 8 x 8. See ``accel_models.zoo.vit``."""
    return VisionTransformer(input_shape, num_classes, _patch(input_shape, patch_size), embed_dim, depth,
                             num_heads, mlp_ratio=4.0, fused_attn=fused_attn).eval()


@_family
def deit(input_shape: Shape = (3, 32, 32), num_classes: int = 10, patch_size: int | None = None,
         embed_dim: int = 64, depth: int = 4, num_heads: int = 4, fused_attn: bool = True) -> nn.Module:
    """DeiT (Touvron et al. 2020, "Training data-efficient image transformers", arXiv:2012.12877): ViT
    plus a distillation token and head, the two heads averaged; attention through
    ``F.scaled_dot_product_attention`` by default."""
    return DistilledVisionTransformer(input_shape, num_classes, _patch(input_shape, patch_size), embed_dim,
                                      depth, num_heads, mlp_ratio=4.0, fused_attn=fused_attn).eval()


# --------------------------------------------------------------------------- user-style CNNs
class GuardedCNN(nn.Module):
    """The CNN of a typical MNIST package: its forward refuses other image sizes, reuses one pool,
    flattens with ``view`` and returns log-probabilities."""

    def __init__(self, input_shape: Shape, num_classes: int) -> None:
        super().__init__()
        (c, h, w), num_classes = _check(input_shape, num_classes, "guarded_cnn", min_side=4)
        self.image_size = (h, w)
        self.conv1 = nn.Conv2d(c, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.dropout = nn.Dropout(0.25)
        self.fc1 = nn.Linear(16 * (h // 4) * (w // 4), 64)
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != self.image_size:
            raise ValueError(f"Expected {self.image_size[0]}x{self.image_size[1]} images, got {tuple(x.shape[-2:])}.")
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.view(x.size(0), -1)
        x = self.dropout(F.relu(self.fc1(x)))
        return F.log_softmax(self.fc2(x), dim=1)


@_family
def guarded_cnn(input_shape: Shape = (1, 28, 28), num_classes: int = 10) -> nn.Module:
    """A user-style MNIST CNN (after PyTorch's examples/mnist) whose ``forward`` begins
    ``if x.shape[-2:] != (H, W): raise ValueError(...)``."""
    return GuardedCNN(input_shape, num_classes).eval()


@_family
def adaptive_pool_cnn(input_shape: Shape = (3, 32, 32), num_classes: int = 10, pooled: int = 3) -> nn.Module:
    """A user-style CNN: two conv-BN-ReLU-maxpool blocks, ``nn.AdaptiveAvgPool2d((3, 3))`` of a map
    it does not divide (8x8 from 3x32x32, 7x7 from 1x28x28: overlapping bins), flatten, Linear."""
    (c, _, _), num_classes = _check(input_shape, num_classes, "adaptive_pool_cnn", min_side=4)
    return nn.Sequential(
        nn.Conv2d(c, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d((pooled, pooled)),
        nn.Flatten(),
        nn.Linear(32 * pooled * pooled, num_classes),
    ).eval()
