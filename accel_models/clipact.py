"""Clipped activations (docs/design.md §6.3): a ReLU with a threshold ``T`` above which values
are clamped or zeroed, and how a model's ReLUs are swapped for them and read back.

Policies for a pre-activation ``x`` and a threshold ``T`` (broadcast to ``x``):

- ``clamp``: ``min(max(x, 0), T)`` (Ranger's original bound);
- ``zero``: ``x`` if ``0 <= x <= T`` else ``0`` (FT-ClipAct's squash, the default);
- ``smooth``: ``max(0, x * (1 - sigmoid(k * (x - T))))`` with ``k = 20`` while the module is in
  training mode (FitAct, ProAct); in eval mode it is the hard ``zero`` policy.

Granularities: ``layer`` (one ``T``, shape ``()``), ``channel`` (shape ``(C,)``), ``neuron``
(one ``T`` per element of one sample's activation, shape ``(C, H, W)`` or ``(F,)``); ``hybrid``
is a model-level choice (HyReLU: layer-wise everywhere except the last activation, neuron-wise).

A *clipping spec* is a plain dict (tensors, str, int, lists), saved in a checkpoint's
``extra["clipping"]``:

``{"format": "sysarray-clipping", "version": 1, "arch": {"name", "input_shape"} or None,
"policy", "granularity", "method", "settings": {...},
"layers": [{"module", "granularity", "shape", "threshold"}, ...]}`` (layers in forward order).

On the chip a threshold is an integer code of the activation's output quantization (see
:func:`threshold_codes`), applied in the post-processing unit (``accel_models.program``).
Only ``nn.ReLU`` modules are swapped; ReLUs called as functions (``F.relu``) stay as they are.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from accel_models.quant import QParams
from sysarray.validation import check_choice, check_instance

POLICIES = ("clamp", "zero", "smooth")
GRANULARITIES = ("layer", "channel", "neuron")
SPEC_GRANULARITIES = GRANULARITIES + ("hybrid",)
SMOOTH_K = 20.0
SPEC_FORMAT = "sysarray-clipping"
SPEC_VERSION = 1


def threshold_shape(granularity: str, act_shape: Sequence[int]) -> tuple[int, ...]:
    """Shape of the threshold tensor of an activation of one-sample shape ``act_shape``."""
    if granularity == "layer":
        return ()
    if granularity == "channel":
        return (int(act_shape[0]),)
    return tuple(int(d) for d in act_shape)


class ClippedReLU(nn.Module):
    """A ReLU with a threshold: ``(N, *act_shape)`` float -> same shape.

    threshold: float tensor of :func:`threshold_shape` (a trainable parameter, real units);
    act_shape: the activation's shape for one sample, ``(C, H, W)`` or ``(F,)``.
    """

    def __init__(self, threshold: torch.Tensor | float, act_shape: Sequence[int], policy: str = "zero",
                 granularity: str = "layer", k: float = SMOOTH_K) -> None:
        super().__init__()
        check_choice(policy, "policy", "ClippedReLU", POLICIES)
        check_choice(granularity, "granularity", "ClippedReLU", GRANULARITIES)
        shape = tuple(int(d) for d in act_shape)
        if not shape or any(d < 1 for d in shape):
            raise ValueError(f"The 'act_shape' argument of ClippedReLU must be (C, H, W) or (F,). Got {act_shape!r} instead.")
        t = torch.as_tensor(threshold, dtype=torch.float32).detach().clone()
        if granularity == "layer" and t.numel() == 1:
            t = t.reshape(())
        want = threshold_shape(granularity, shape)
        if tuple(t.shape) != want:
            raise ValueError(f"The 'threshold' argument of ClippedReLU must have shape {list(want)} (a {granularity}-wise "
                             f"threshold for an activation of shape {list(shape)}). Got shape {list(t.shape)} instead.")
        if not bool(torch.isfinite(t).all()):
            raise ValueError("The 'threshold' argument of ClippedReLU must hold finite numbers. "
                             "Got NaN or infinite values instead.")
        self.threshold = nn.Parameter(t)
        self.act_shape = shape
        self.policy = policy
        self.granularity = granularity
        self.k = float(k)

    def broadcast_threshold(self) -> torch.Tensor:
        """The threshold shaped to broadcast against one sample: ``()``, ``(C, 1, 1)``/``(F,)`` or ``act_shape``."""
        t = self.threshold
        if self.granularity == "channel":
            t = t.reshape(-1, *([1] * (len(self.act_shape) - 1)))
        return t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.broadcast_threshold()
        if self.policy == "clamp":
            return torch.minimum(torch.relu(x), t)
        if self.policy == "smooth" and self.training:
            return torch.relu(x * (1 - torch.sigmoid(self.k * (x - t))))
        return torch.where((x >= 0) & (x <= t), x, torch.zeros_like(x))

    @property
    def inference_policy(self) -> str:
        """What runs on the chip: ``smooth`` is trained, ``zero`` is deployed."""
        return "zero" if self.policy == "smooth" else self.policy

    def clip_bounds(self) -> tuple[float, None]:
        """For the lowering: a ReLU clamp; the threshold itself becomes integer codes (threshold_codes)."""
        return (0.0, None)

    def extra_repr(self) -> str:
        return f"policy={self.policy}, granularity={self.granularity}, act_shape={list(self.act_shape)}"


def threshold_codes(module: ClippedReLU, qp: QParams, lo: int, hi: int) -> torch.Tensor:
    """Integer threshold codes of ``module`` for an activation quantized with ``qp``.

    ``t = floor(T / scale + 0.5) + zero_point`` (round half up, as the input quantization), then
    clamped to the output clamp ``[lo, hi]`` (so a code fits the 8-bit threshold memory). Rounding
    to nearest keeps every value ``x <= T`` (its code ``round(x / scale)`` is at most ``t``).
    Returns int64 in the broadcast shape of :meth:`ClippedReLU.broadcast_threshold`.
    """
    t = module.broadcast_threshold().detach().double()
    codes = torch.floor(t / qp.scale + 0.5).to(torch.int64) + qp.zero_point
    return codes.clamp(lo, hi)


def threshold_range(module: ClippedReLU) -> tuple[float, float]:
    """The output range of a clipped activation, ``[0, max T]``: what its quantization covers, so
    every threshold code is exact within the 8-bit range."""
    return 0.0, max(0.0, float(module.threshold.detach().max()))


# --------------------------------------------------------------------------- model surgery
def activation_shapes(model: nn.Module, input_shape: Sequence[int], kinds=(nn.ReLU, ClippedReLU)) -> dict[str, tuple[int, ...]]:
    """``{module name: one-sample output shape}`` of the ``kinds`` modules, in forward order, from one
    forward pass of a zero batch of two ``input_shape`` images. A module called twice is refused."""
    shapes: dict[str, tuple[int, ...]] = {}
    calls: dict[str, int] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, kinds):
            def hook(mod, inp, out, name=name):
                calls[name] = calls.get(name, 0) + 1
                shapes[name] = tuple(int(d) for d in out.shape[1:])
            hooks.append(m.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(2, *[int(d) for d in input_shape]))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    twice = [n for n, c in calls.items() if c > 1]
    if twice:
        raise ValueError(f"The ReLU module(s) {', '.join(twice)} are called more than once per forward pass; clipping "
                         "needs one module per activation layer (each gets its own threshold).")
    return shapes


def _input_shape(model: nn.Module, spec: Mapping | None = None) -> list[int]:
    arch = getattr(model, "arch", None)
    if isinstance(arch, Mapping) and arch.get("input_shape"):
        return list(arch["input_shape"])
    if spec is not None and isinstance(spec.get("arch"), Mapping) and spec["arch"].get("input_shape"):
        return list(spec["arch"]["input_shape"])
    raise ValueError("Cannot tell the model's input shape: build it with accel_models.zoo.build_model (it carries an "
                     "'arch' attribute) or pass a spec whose 'arch' has 'input_shape'.")


def clippable_activations(model: nn.Module, input_shape: Sequence[int] | None = None) -> dict[str, tuple[int, ...]]:
    """The ``nn.ReLU`` (or already clipped) modules of ``model`` that clipping can replace, in forward
    order, with their one-sample shapes. Raises ValueError when there is none."""
    shape = list(input_shape) if input_shape is not None else _input_shape(model)
    acts = activation_shapes(model, shape)
    if not acts:
        raise ValueError(f"The model {type(model).__name__} has no nn.ReLU module to clip (ReLUs called as functions, "
                         "ReLU6 and other activations are not clipped). Use a model with nn.ReLU modules.")
    return acts


def hybrid_granularities(names: Sequence[str]) -> dict[str, str]:
    """HyReLU: layer-wise everywhere except the last activation, which is neuron-wise."""
    return {n: ("neuron" if i == len(names) - 1 else "layer") for i, n in enumerate(names)}


def make_spec(model: nn.Module, thresholds: Mapping[str, torch.Tensor], *, policy: str = "zero",
              granularity: str = "layer", method: str = "manual", settings: Mapping | None = None) -> dict:
    """A clipping spec for ``model`` with the given thresholds (module name -> tensor of the layer's
    granularity; modules not named are left unclipped)."""
    check_choice(policy, "policy", "make_spec", POLICIES)
    check_choice(granularity, "granularity", "make_spec", SPEC_GRANULARITIES)
    acts = clippable_activations(model)
    grans = hybrid_granularities(list(acts)) if granularity == "hybrid" else {n: granularity for n in acts}
    unknown = [n for n in thresholds if n not in acts]
    if unknown:
        raise ValueError(f"The 'thresholds' argument of make_spec must name ReLU modules of the model ({', '.join(acts)}). "
                         f"Got {', '.join(unknown)} instead.")
    layers = []
    for name, shape in acts.items():
        if name not in thresholds:
            continue
        t = torch.as_tensor(thresholds[name], dtype=torch.float32).detach().clone()
        want = threshold_shape(grans[name], shape)
        if grans[name] == "layer":
            t = t.reshape(())
        if tuple(t.shape) != want:
            raise ValueError(f"The 'thresholds' argument of make_spec must give '{name}' ({grans[name]}-wise, activation "
                             f"{list(shape)}) a threshold of shape {list(want)}. Got shape {list(t.shape)} instead.")
        layers.append({"module": name, "granularity": grans[name], "shape": list(shape), "threshold": t})
    arch = getattr(model, "arch", None)
    return {
        "format": SPEC_FORMAT, "version": SPEC_VERSION,
        "arch": {"name": arch.get("name"), "input_shape": list(arch.get("input_shape"))} if isinstance(arch, Mapping) else None,
        "policy": "zero" if policy == "smooth" else policy, "granularity": granularity, "method": method,
        "settings": dict(settings or {}), "layers": layers,
    }


def check_spec(spec: Any) -> dict:
    """Validate the structure of a clipping spec (not yet against a model); returns it."""
    if not isinstance(spec, Mapping) or spec.get("format") != SPEC_FORMAT:
        raise ValueError(f"A clipping spec must be a dict with 'format': '{SPEC_FORMAT}' (what make_spec, clipping_spec "
                         "and `sysarray clip` write). Got something else.")
    if spec.get("version") != SPEC_VERSION:
        raise ValueError(f"This sysarray reads clipping specs of version {SPEC_VERSION}. Got version {spec.get('version')!r}.")
    check_choice(spec.get("policy"), "policy", "a clipping spec", POLICIES)
    layers = spec.get("layers")
    if not isinstance(layers, list) or not layers:
        raise ValueError("A clipping spec must list at least one clipped layer under 'layers'.")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Mapping) or not {"module", "granularity", "shape", "threshold"} <= set(layer):
            raise ValueError(f"Layer {i} of the clipping spec must have 'module', 'granularity', 'shape' and 'threshold'.")
        check_choice(layer["granularity"], "granularity", f"layer {i} of a clipping spec", GRANULARITIES)
        check_instance(layer["threshold"], torch.Tensor, "threshold", f"layer '{layer['module']}' of a clipping spec",
                       what="a tensor")
    return dict(spec)


def apply_clipping(model: nn.Module, spec: Mapping) -> nn.Module:
    """Swap the ReLU modules named in ``spec`` for :class:`ClippedReLU` with its thresholds, in place.

    Checks that the spec was made for this model: same architecture name and input shape (when
    both are known), every module exists and is a ReLU (or a clipped one), and every activation
    shape matches. Returns ``model``.
    """
    spec = check_spec(spec)
    arch = getattr(model, "arch", None)
    s_arch = spec.get("arch")
    if isinstance(arch, Mapping) and isinstance(s_arch, Mapping):
        if s_arch.get("name") != arch.get("name") or list(s_arch.get("input_shape") or []) != list(arch.get("input_shape")):
            raise ValueError(f"The clipping thresholds were found for a {s_arch.get('name')} with inputs "
                             f"{s_arch.get('input_shape')}, but the model is a {arch.get('name')} with inputs "
                             f"{arch.get('input_shape')}; find thresholds for this model (sysarray clip).")
    acts = clippable_activations(model, _input_shape(model, spec))
    modules = dict(model.named_modules())
    for layer in spec["layers"]:
        name = layer["module"]
        if name not in acts:
            raise ValueError(f"The clipping spec names the module '{name}', which is not a ReLU module of this "
                             f"{type(model).__name__} (its ReLU modules: {', '.join(acts)}); the thresholds belong to another model.")
        if list(acts[name]) != list(layer["shape"]):
            raise ValueError(f"The clipping spec has activation '{name}' of shape {list(layer['shape'])}, but in this model it "
                             f"has shape {list(acts[name])}; the thresholds belong to another model.")
    for layer in spec["layers"]:
        name = layer["module"]
        new = ClippedReLU(layer["threshold"], acts[name], policy=spec["policy"], granularity=layer["granularity"])
        parent_name, _, child = name.rpartition(".")
        parent = modules[parent_name] if parent_name else model
        old = modules[name]
        new.train(old.training)
        setattr(parent, child, new)
    return model


def clipped_modules(model: nn.Module) -> dict[str, ClippedReLU]:
    """``{name: module}`` of the model's clipped activations (named_modules order)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, ClippedReLU)}


def clipping_spec(model: nn.Module, *, method: str = "manual", settings: Mapping | None = None) -> dict:
    """Read the model's clipped activations back into a spec (for the checkpoint's extra["clipping"])."""
    mods = clipped_modules(model)
    if not mods:
        raise ValueError(f"The model {type(model).__name__} has no clipped activation; apply_clipping first.")
    order = list(activation_shapes(model, _input_shape(model), kinds=(ClippedReLU,)))
    policies = {m.inference_policy for m in mods.values()}
    if len(policies) != 1:
        raise ValueError(f"All clipped activations of a model must share one policy. Got {sorted(policies)}.")
    grans = {m.granularity for m in mods.values()}
    names = list(order)
    hybrid = len(names) > 1 and mods[names[-1]].granularity == "neuron" and \
        all(mods[n].granularity == "layer" for n in names[:-1])
    granularity = "hybrid" if hybrid else (grans.pop() if len(grans) == 1 else "mixed")
    arch = getattr(model, "arch", None)
    return {
        "format": SPEC_FORMAT, "version": SPEC_VERSION,
        "arch": {"name": arch.get("name"), "input_shape": list(arch.get("input_shape"))} if isinstance(arch, Mapping) else None,
        "policy": policies.pop(), "granularity": granularity, "method": method, "settings": dict(settings or {}),
        "layers": [{"module": n, "granularity": mods[n].granularity, "shape": list(mods[n].act_shape),
                    "threshold": mods[n].threshold.detach().cpu().clone()} for n in names],
    }


def threshold_count(spec: Mapping) -> int:
    """How many thresholds a spec stores (its memory overhead in parameters)."""
    return int(sum(layer["threshold"].numel() for layer in spec["layers"]))


def set_policy(model: nn.Module, policy: str) -> None:
    """Set the policy of every clipped activation of ``model`` (e.g. ``smooth`` to train, ``zero`` to deploy)."""
    check_choice(policy, "policy", "set_policy", POLICIES)
    for m in clipped_modules(model).values():
        m.policy = policy


__all__ = [
    "ClippedReLU", "GRANULARITIES", "POLICIES", "SPEC_GRANULARITIES", "activation_shapes", "apply_clipping",
    "check_spec", "clippable_activations", "clipped_modules", "clipping_spec", "hybrid_granularities", "make_spec",
    "set_policy", "threshold_codes", "threshold_count", "threshold_range",
]
