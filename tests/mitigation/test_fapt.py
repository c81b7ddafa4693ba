"""FAP+T (mitigation/fat.py, Zhang et al., VTS 2018), step by step: the weights pruned are exactly
those mapped to faulty PEs of the chip, they are 0 at every training step, and only they are."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from accel_models.evaluation import prepare
from mitigation.fat import fap_masks, fap_t
from sysarray import ArrayConfig, FaultMap

WS = ArrayConfig(16, 16, "ws")


@pytest.fixture(scope="module")
def task(lenet_ckpt):
    return prepare(lenet_ckpt)


def faulty_weights(op, faulty: np.ndarray) -> torch.Tensor:
    """Bool (N, K): weight (n, k) of a layer (its K order (c, kh, kw)) sits on faulty PE (k % R, n % C)."""
    n_out = op.weight.shape[0]
    k = int(np.prod(op.weight.shape[1:]))
    ng = n_out // op.groups
    rows, cols = faulty.shape
    out = torch.zeros(n_out, k, dtype=torch.bool)
    for n in range(n_out):
        for kk in range(k):
            out[n, kk] = bool(faulty[kk % rows, (n % ng) % cols])
    return out


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_fapt_prunes_exactly_the_faulty_pes_weights_and_holds_them_at_zero(task, optimizer):
    fm = FaultMap.random(WS, pe_rate=0.5, seed=11)
    faulty = fm.faulty_pes()
    masks = fap_masks(task.program, fm)
    for op in task.program.gemms:  # the mask is the WS mapping of the chip's faulty PEs, nothing else
        assert torch.equal(~masks[op.name].reshape(op.weight.shape[0], -1), faulty_weights(op, faulty))
    steps, handles = [], []
    for name, keep in masks.items():  # hooks travel with the copy fap_t trains
        def check(module, inputs, keep=keep):
            steps.append(bool((module.weight.detach()[~keep] == 0).all()))
        handles.append(task.model.get_submodule(name).register_forward_pre_hook(check))
    try:
        x, y = task.dataset.train_x[:256], task.dataset.train_y[:256]
        model, res = fap_t(task.model, task.program, WS, fm, x, y, 2, optimizer=optimizer,
                           lr=0.02 if optimizer == "sgd" else 1e-3)
    finally:
        for h in handles:
            h.remove()
    assert res.steps == 8 and len(steps) == 8 * len(masks) and all(steps)
    for name, keep in masks.items():
        w, w0 = model.get_submodule(name).weight.detach(), task.model.get_submodule(name).weight.detach()
        assert (w[~keep] == 0).all()  # pruned and held at zero
        assert (w[keep] != 0).all()  # no other weight is pruned
        assert not torch.equal(w[keep], w0[keep])  # and the kept ones were trained
    assert all((task.model.get_submodule(n).weight[~k] != 0).any() for n, k in masks.items())  # the input untouched
