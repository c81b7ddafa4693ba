"""The architecture families: each builds, runs, exports with torch.export, and holds its constructs."""
from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from accel_models.zoo.families import FAMILIES, channel_shuffle, default_input_shape

NAMES = sorted(FAMILIES)
NEED_32 = {"vgg11_bn", "densenet", "convnext"}  # downsample too often for 28 x 28

# ATen ops (export's names) that show each family's characteristic constructs
CONSTRUCTS = {
    "resnet18": {"add_", "adaptive_avg_pool2d", "max_pool2d", "flatten"},
    "resnet50": {"add_", "adaptive_avg_pool2d", "max_pool2d", "flatten"},
    "timm_style_resnet": {"add_", "mean", "dropout"},
    "mobilenet_v2": {"hardtanh", "add", "adaptive_avg_pool2d"},
    "mobilenet_v3": {"hardswish", "hardsigmoid", "mul", "add_"},
    "efficientnet_b0": {"silu", "sigmoid", "mul", "add_"},
    "regnet_x": {"add", "relu_"},
    "vgg11_bn": {"batch_norm", "adaptive_avg_pool2d", "dropout"},
    "squeezenet": {"cat", "max_pool2d", "adaptive_avg_pool2d"},
    "googlenet": {"cat", "max_pool2d", "batch_norm"},
    "densenet": {"cat", "avg_pool2d", "adaptive_avg_pool2d"},
    "shufflenet_v2": {"chunk", "transpose", "view", "cat", "mean"},
    "convnext": {"permute", "layer_norm", "gelu", "mul", "sqrt"},
    "vit": {"cat", "expand", "unbind", "matmul", "softmax", "layer_norm", "gelu"},
    "deit": {"cat", "expand", "scaled_dot_product_attention", "div"},
    "guarded_cnn": {"view", "log_softmax"},
    "adaptive_pool_cnn": {"adaptive_avg_pool2d", "flatten"},
}


@pytest.fixture(autouse=True)
def _seeded():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


def _ops(program: torch.export.ExportedProgram) -> set[str]:
    """The ATen op names (``conv2d``, ``cat``, ...) called in an exported graph."""
    return {str(n.target).split(".")[1] for n in program.graph.nodes
            if n.op == "call_function" and str(n.target).startswith("aten.")}


def test_the_families():
    assert NAMES == sorted(CONSTRUCTS)
    assert default_input_shape("vit") == (3, 32, 32) and default_input_shape("guarded_cnn") == (1, 28, 28)
    with pytest.raises(ValueError, match="Unknown family 'foo'"):
        default_input_shape("foo")


@pytest.mark.parametrize("name", NAMES)
def test_builds_runs_and_exports(name):
    shape = default_input_shape(name)
    model = FAMILIES[name](shape, 10)
    assert not model.training  # eval-ready
    x = torch.rand(8, *shape)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (8, 10) and torch.isfinite(y).all()

    program = torch.export.export(model.eval(), (x,))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), y)
    missing = CONSTRUCTS[name] - _ops(program)
    assert not missing, f"{name}: the exported graph lacks {sorted(missing)}"

    with torch.no_grad():  # small enough to benchmark: a batch of 8 in well under 100 ms (loose bound for busy CPUs)
        best = min(_timed(model, x) for _ in range(3))
    assert best < 0.25, f"{name}: {best * 1e3:.0f} ms for a batch of 8"


def _timed(model: nn.Module, x: torch.Tensor) -> float:
    t = time.perf_counter()
    model(x)
    return time.perf_counter() - t


@pytest.mark.parametrize("shape", [(3, 64, 64), (1, 28, 28)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", NAMES)
def test_other_input_shapes(name, shape):
    if shape[1] == 28 and name in NEED_32:
        with pytest.raises(ValueError, match="at least"):
            FAMILIES[name](shape, 7)
        return
    model = FAMILIES[name](shape, 7)
    with torch.no_grad():
        assert model(torch.rand(2, *shape)).shape == (2, 7)


@pytest.mark.parametrize("name", NAMES)
def test_small_sides_refused_at_build_or_run(name):
    for side in (1, 3, 4, 14, 15, 16, 17, 28, 29, 31, 32):  # around each family's smallest side
        try:
            model = FAMILIES[name]((3, side, side), 10)
        except ValueError as exc:
            assert "at least" in str(exc)
            continue
        with torch.no_grad():
            assert model(torch.rand(2, 3, side, side)).shape == (2, 10)


def test_guarded_cnn_refuses_other_sizes():
    model = FAMILIES["guarded_cnn"]()
    with pytest.raises(ValueError, match="Expected 28x28 images, got \\(32, 32\\)"):
        model(torch.rand(1, 1, 32, 32))


def test_timm_style_forward_head():
    model = FAMILIES["timm_style_resnet"]()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        maps = model.forward_features(x)
        pooled = model.forward_head(maps, pre_logits=True)
        assert maps.ndim == 4 and pooled.shape == (2, model.num_features)
        torch.testing.assert_close(model.forward_head(pooled), model(x))  # pooled features pass through
    with pytest.raises(AssertionError, match="Expected N x C x H x W"):  # torch._assert
        model(torch.rand(3, 64, 64))


def test_attention_variants_agree():
    explicit = FAMILIES["vit"](fused_attn=False)
    fused = FAMILIES["vit"](fused_attn=True)
    fused.load_state_dict(explicit.state_dict())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), explicit(x), rtol=1e-4, atol=1e-5)
    assert explicit.patch_embed.num_patches == 64 and FAMILIES["vit"]((3, 64, 64)).patch_embed.patch_size == (8, 8)


def test_deit_heads():
    model = FAMILIES["deit"]()
    assert model.pos_embed.shape[1] == 64 + 2  # class and distillation tokens
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        tokens = model.forward_features(x)
        both = (model.head(tokens[:, 0]) + model.head_dist(tokens[:, 1])) / 2
        torch.testing.assert_close(model(x), both)
    model.train()
    model.distilled_training = True
    logits, dist_logits = model(x)
    assert logits.shape == dist_logits.shape == (2, 10)


def test_channel_shuffle_interleaves_groups():
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]


def test_structures():
    models = {name: FAMILIES[name]() for name in ("mobilenet_v2", "regnet_x", "densenet", "convnext")}
    convs = [m for m in models["mobilenet_v2"].modules() if isinstance(m, nn.Conv2d)]
    assert any(m.groups == m.in_channels == m.out_channels > 1 for m in convs)  # depthwise
    assert sum(type(m).__name__ == "InvertedResidual" for m in models["mobilenet_v2"].modules()) == 17
    assert {m.groups for m in models["regnet_x"].modules() if isinstance(m, nn.Conv2d)} >= {2, 4, 8, 16}
    # BN-ReLU-conv order: a dense layer's first BatchNorm normalises the concatenated features
    layer = models["densenet"].features.denseblock1.denselayer2
    assert list(layer.named_children())[0][0] == "norm1" and layer.norm1.num_features == 16 + 8
    blocks = [m for m in models["convnext"].modules() if type(m).__name__ == "ConvNeXtBlock"]
    assert len(blocks) == 12 and all(b.gamma is not None and b.dwconv.kernel_size == (7, 7) for b in blocks)


def test_adaptive_pool_does_not_divide():
    model = FAMILIES["adaptive_pool_cnn"]()
    pool = next(m for m in model.modules() if isinstance(m, nn.AdaptiveAvgPool2d))
    assert pool.output_size == (3, 3)
    vgg = FAMILIES["vgg11_bn"]()
    with torch.no_grad():
        maps = vgg.features(torch.rand(1, 3, 64, 64))
    assert maps.shape[-2:] == (2, 2) and vgg.avgpool(maps).shape[-2:] == (7, 7)
