"""The model zoo: shapes, torch.fx traceability, only layers the int8 lowering supports, the registry."""
from __future__ import annotations

import operator

import pytest
import torch
import torch.fx
from torch import nn

from accel_models.zoo import MODELS, build_model, model_names
from accel_models.zoo.resnet20 import BasicBlock

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]
NEW_MODELS = ["mobilenetv2", "mobilenetv3", "vit"]  # today's families: layers beyond the int8 lowering's

# leaf modules the lowering handles (docs/design.md §5); containers are checked separately
SUPPORTED_LEAVES = (
    nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.BatchNorm1d, nn.ReLU, nn.ReLU6, nn.Hardtanh,
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Dropout,
)
SUPPORTED_FUNCTIONS = {operator.add, torch.flatten}
SUPPORTED_METHODS = {"flatten", "view", "reshape", "size"}


@pytest.fixture(autouse=True)
def _seeded():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


def test_registry_names():
    assert model_names() == ["alexnet", "lenet5", "mlp", "mobilenetv2", "mobilenetv3", "resnet20", "vgg11", "vit"]
    assert set(MODELS) == set(model_names())


def test_unknown_model_error():
    with pytest.raises(ValueError) as exc:
        build_model("foo", (1, 8, 8), 10)
    assert str(exc.value) == ("Unknown model 'foo'. Known models: alexnet, lenet5, mlp, mobilenetv2, mobilenetv3, "
                              "resnet20, vgg11, vit.")


@pytest.mark.parametrize("name", ["mlp", "lenet5", "vgg11", "alexnet", "resnet20", *NEW_MODELS])
def test_bad_arguments(name):
    with pytest.raises(TypeError, match="Bad arguments for model"):
        build_model(name, (1, 8, 8), 10, no_such_argument=1)
    with pytest.raises(ValueError, match="input_shape"):
        build_model(name, (8, 8), 10)
    with pytest.raises(ValueError, match="input_shape"):
        build_model(name, (1, 0, 8), 10)
    with pytest.raises(ValueError, match="num_classes"):
        build_model(name, (1, 8, 8), 1)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", ["mlp", "lenet5", "vgg11", "alexnet", "resnet20"])
def test_model_shapes_trace_and_layers(name, shape):
    model = build_model(name, shape, 10).eval()
    x = torch.rand(3, *shape)
    y = model(x)
    assert y.shape == (3, 10) and y.dtype == torch.float32

    gm = torch.fx.symbolic_trace(model)
    torch.testing.assert_close(gm(x), y, rtol=0, atol=0)

    for mod_name, mod in model.named_modules():
        if len(list(mod.children())) == 0:
            assert isinstance(mod, SUPPORTED_LEAVES), f"{name}: {mod_name} is {type(mod).__name__}"
        else:
            assert isinstance(mod, (nn.Sequential, BasicBlock)) or mod is model, f"{name}: {mod_name}"

    called = []
    for node in gm.graph.nodes:
        if node.op == "call_module":
            called.append(node.target)
        elif node.op == "call_function":
            assert node.target in SUPPORTED_FUNCTIONS, f"{name}: function {node.target}"
        elif node.op == "call_method":
            assert node.target in SUPPORTED_METHODS, f"{name}: method {node.target}"
    # every module is its own layer: no ReLU or pool reused, so per-layer methods (clipping) can set each
    assert len(called) == len(set(called))
    leaves = [n for n, m in model.named_modules() if len(list(m.children())) == 0]
    assert sorted(called) == sorted(leaves)

    # trains: a forward/backward pass in train mode with a small batch
    model.train()
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", ["mlp", "lenet5", "vgg11", "alexnet", "resnet20", *NEW_MODELS])
def test_arch_rebuilds_same_model(name):
    model = build_model(name, (1, 8, 8), 10)
    arch = model.arch
    assert arch["name"] == name and arch["input_shape"] == [1, 8, 8] and arch["num_classes"] == 10
    again = build_model(arch["name"], arch["input_shape"], arch["num_classes"], **arch["kwargs"])
    assert again.arch == arch
    a, b = model.state_dict(), again.state_dict()
    assert list(a) == list(b) and all(a[k].shape == b[k].shape for k in a)


def test_kwargs_recorded_with_defaults():
    m = build_model("mlp", (1, 8, 8), 10, hidden=(32,))
    assert m.arch["kwargs"] == {"hidden": [32], "dropout": 0.1}
    m = build_model("vgg11", (3, 32, 32), 5, width=0.125)
    assert m.arch["kwargs"]["width"] == 0.125 and m.arch["kwargs"]["batch_norm"] is True
    assert m.features[0].out_channels == 8 and m.classifier[-1].out_features == 5


def _count(model, cls):
    return sum(isinstance(m, cls) for m in model.modules())


def test_resnet20_has_20_weight_layers():
    model = build_model("resnet20", (3, 32, 32), 10)
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    shortcut = [n for n, _ in convs if ".downsample." in n]
    main = [n for n, _ in convs if ".downsample." not in n]
    # 6n + 2 with n = 3: the stem, 2 convs in each of 9 blocks, and the fc (He et al. 2016, 4.2)
    assert len(main) == 19 and _count(model, nn.Linear) == 1
    # option B: a 1x1 stride-2 projection where the stage changes shape (16->32, 32->64)
    assert shortcut == ["layer2.0.downsample.0", "layer3.0.downsample.0"]
    assert all(m.kernel_size == (1, 1) and m.stride == (2, 2) for n, m in convs if n in shortcut)
    assert [m.out_channels for n, m in convs if n.endswith("conv2")] == [16] * 3 + [32] * 3 + [64] * 3
    assert _count(model, nn.BatchNorm2d) == 21 and all(m.bias is None for _, m in convs)
    n_params = sum(p.numel() for p in model.parameters())
    assert 0.26e6 < n_params < 0.28e6  # 0.27 M as in the paper's table 6 (plus the two projections)


@pytest.mark.parametrize("shape, features", [((1, 8, 8), 16 * 2 * 2), ((1, 28, 28), 16 * 5 * 5), ((3, 32, 32), 16 * 5 * 5)])
def test_lenet5_geometry(shape, features):
    model = build_model("lenet5", shape, 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [6, 16] and all(c.kernel_size == (5, 5) for c in convs)
    assert _count(model, nn.MaxPool2d) == 2
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(features, 120), (120, 84), (84, 10)]
    if shape[1] == 32:
        assert [c.padding for c in convs] == [(0, 0), (0, 0)]  # the original LeNet-5 on 32x32


@pytest.mark.parametrize("shape, vgg_pools", [((1, 8, 8), 3), ((1, 28, 28), 4), ((3, 32, 32), 5), ((1, 1, 1), 0)])
def test_pools_fit_small_inputs(shape, vgg_pools):
    vgg = build_model("vgg11", shape, 10)
    assert _count(vgg, nn.MaxPool2d) == vgg_pools and _count(vgg, nn.Conv2d) == 8
    alex = build_model("alexnet", shape, 10)
    assert _count(alex, nn.MaxPool2d) == min(3, vgg_pools) and _count(alex, nn.Conv2d) == 5
    for model in (vgg, alex, build_model("lenet5", shape, 10), build_model("resnet20", shape, 10)):
        assert model.eval()(torch.rand(2, *shape)).shape == (2, 10)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", NEW_MODELS)
def test_new_models_shapes_trace_and_export(name, shape):
    model = build_model(name, shape, 10).eval()
    x = torch.rand(3, *shape)
    with torch.no_grad():
        y = model(x)
        assert y.shape == (3, 10) and torch.isfinite(y).all()
        torch.testing.assert_close(torch.fx.symbolic_trace(model)(x), y, rtol=0, atol=0)
        program = torch.export.export(model, (x,))
        torch.testing.assert_close(program.module()(x), y)


@pytest.mark.parametrize("name", NEW_MODELS)
def test_new_models_train(name, digits):
    model = build_model(name, (1, 8, 8), 10).train()
    x, y = digits.train_x[:64], digits.train_y[:64]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(20):  # the ViT's loss falls slowest: about 0.2 in 20 steps, the MobileNets' by 1.5
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(p.grad is not None for p in model.parameters())
    assert losses[-1] < losses[0] - 0.1, losses


def test_new_models_structure():
    v2 = build_model("mobilenetv2", (1, 28, 28), 10)
    convs = [m for m in v2.modules() if isinstance(m, nn.Conv2d)]
    assert sum(m.groups == m.in_channels == m.out_channels > 1 for m in convs) == 10  # a depthwise conv per block
    assert _count(v2, nn.ReLU6) == 2 + 2 * 9 + 1 and convs[0].stride == (2, 2)  # stem, blocks, last conv
    assert build_model("mobilenetv2", (1, 8, 8), 10).features[0][0].stride == (1, 1)  # no stride-2 stem on 8x8
    v3 = build_model("mobilenetv3", (1, 28, 28), 10)
    assert _count(v3, nn.Hardsigmoid) == 9 and _count(v3, nn.Hardswish) > 10 and _count(v3, nn.ReLU) == 9 + 5  # SE + early blocks
    vit = build_model("vit", (1, 28, 28), 10)
    assert vit.patch_embed.patch_size == (7, 7) and vit.pos_embed.shape == (1, 16 + 1, 64)
    assert build_model("vit", (1, 8, 8), 10).patch_embed.patch_size == (2, 2)
    assert build_model("vit", (3, 32, 32), 10, patch_size=4).patch_embed.num_patches == 64
    assert _count(vit, nn.LayerNorm) == 2 * 4 + 1 and _count(vit, nn.GELU) == 4
    with pytest.raises(ValueError, match="patch_size"):
        build_model("vit", (1, 28, 28), 10, patch_size=5)
    n_params = {name: sum(p.numel() for p in build_model(name, (1, 28, 28), 10).parameters()) for name in NEW_MODELS}
    assert all(1e5 < n < 6e5 for n in n_params.values()), n_params
