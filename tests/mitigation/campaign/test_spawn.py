"""How campaign workers are sent their evaluator and started (mitigation/campaign/spawn.py)."""
from __future__ import annotations

import pickle
import threading
from multiprocessing import spawn

import pytest
import torch

from mitigation.campaign.spawn import starting_without_main, worker_blob

MAIN_KEYS = ("init_main_from_path", "init_main_from_name")


def _tensors() -> dict:
    base = torch.arange(60, dtype=torch.int32).reshape(3, 4, 5)
    return {
        "int8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "uint8": torch.tensor([0, 255], dtype=torch.uint8),
        "int64": torch.tensor([-(2 ** 40), 2 ** 40]),
        "float32": torch.tensor([0.1, -2.5, float("inf"), float("nan")]),
        "float64": torch.tensor([1e-300], dtype=torch.float64),
        "bool": torch.tensor([True, False]),
        "scalar": torch.tensor(7, dtype=torch.int32),
        "empty": torch.zeros(0, 3),
        "transposed": base.transpose(0, 2),
        "sliced": base[1:, ::2, 1:4],
        "channels_last": torch.rand(2, 3, 4, 5, generator=torch.Generator().manual_seed(0)).contiguous(
            memory_format=torch.channels_last),
        "bfloat16": torch.tensor([1.5, -2.0], dtype=torch.bfloat16),  # numpy has no bfloat16: torch's own path
        "grad": torch.ones(2, requires_grad=True),  # numpy() refuses it: torch's own path
        "parameter": torch.nn.Parameter(torch.ones(3)),  # a subclass: torch's own path
    }


def test_worker_blob_keeps_values_dtypes_shapes_and_strides():
    data = _tensors()
    data["same"] = (data["int8"], data["int8"])  # one object twice stays one object
    back = pickle.loads(worker_blob(data))
    for name, t in _tensors().items():
        got = back[name]
        assert type(got) is type(t), name
        assert got.dtype == t.dtype and got.shape == t.shape and got.stride() == t.stride(), name
        assert got.requires_grad == t.requires_grad, name
        torch.testing.assert_close(got.detach(), t.detach(), rtol=0, atol=0, equal_nan=True, msg=name)
    assert back["same"][0] is back["same"][1]
    writable = back["int8"]
    writable += 1  # not a read-only numpy buffer underneath
    assert writable.tolist() == [-127, 1, -128]


def test_plain_tensors_travel_as_numpy_arrays():
    # plain CPU tensors go through numpy (no nested torch.save per storage)
    blob = worker_blob([torch.arange(10)])
    assert b"torch._utils" not in blob and b"_tensor_from_array" in blob
    assert b"torch._utils" in pickle.dumps([torch.arange(10)], protocol=pickle.HIGHEST_PROTOCOL)


def test_starting_without_main_drops_the_main_script_in_this_thread_only():
    outside = spawn.get_preparation_data("x")
    seen_elsewhere = []
    with starting_without_main(b"plain evaluator bytes"):
        inside = spawn.get_preparation_data("x")
        t = threading.Thread(target=lambda: seen_elsewhere.append(spawn.get_preparation_data("x")))
        t.start()
        t.join()
    after = spawn.get_preparation_data("x")
    assert not any(k in inside for k in MAIN_KEYS)
    assert {k: v for k, v in inside.items() if k not in MAIN_KEYS} == {k: v for k, v in outside.items() if k not in MAIN_KEYS}
    assert seen_elsewhere == [outside] and after == outside


def test_starting_without_main_keeps_the_main_script_when_the_blob_needs_it():
    outside = spawn.get_preparation_data("x")
    with starting_without_main(pickle.dumps({"module": "__main__"})):
        assert spawn.get_preparation_data("x") == outside


@pytest.mark.parametrize("needs_main", [False, True])
def test_a_pool_started_without_main_runs_tasks(needs_main):
    from concurrent.futures import ProcessPoolExecutor

    from mitigation.campaign.pool import _mp_context

    blob = worker_blob({"x": torch.arange(5)}) + (b"__main__" if needs_main else b"")
    with ProcessPoolExecutor(max_workers=1, mp_context=_mp_context()) as pool:
        with starting_without_main(blob):
            first = pool.submit(abs, -3)
        assert first.result(timeout=120) == 3
