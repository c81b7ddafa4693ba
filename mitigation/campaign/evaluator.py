"""What a campaign evaluates: the task (a model and its test images) and the per-chip evaluator.

A task is :class:`CheckpointTask` (a checkpoint judged on its dataset's test split) or
:class:`ProgramTask` (a lowered program and images, hashed by content). :class:`Evaluator` runs the
fault-free chip once and then one faulty inference per chip, giving the chip's
``OUTCOME_COLUMNS``; it is what every worker process is sent.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mitigation.campaign.store import file_sha256
from sysarray.validation import check_positive_int

DEFAULT_CRITICAL_DROP = 0.05
# The fault-free values an evaluator keeps for its chips to reuse: each chip's run skips the layers
# before its first faulty one, and every worker holds a copy, so this bounds the memory per worker.
TRACE_BYTES = 64 << 20
OUTCOME_COLUMNS = ("faulty_pes", "stuck_bits", "registers", "accuracy", "drop", "sdc_rate", "critical")


@dataclass
class Evaluator:
    """Runs one chip: everything a worker needs, shipped once per worker.

    ``clean_predictions`` (N,) int64 and ``clean_correct`` come from one fault-free run done by
    :meth:`build`; every chip then costs one faulty inference. On the fast engine on the CPU that
    run is a :meth:`~accel_models.program.Program.trace`, whose kept values (``trace``, at most
    ``TRACE_BYTES``) the chips' runs reuse up to the first layer each chip changes. ``device``:
    where the chips' fast engine runs (None: the CPU); the outcomes do not depend on it.
    """

    program: Any
    images: Any
    labels: Any
    cfg: Any
    engine: str
    critical_drop: float
    batch_size: int | None
    clean_predictions: Any = None
    clean_correct: int = 0
    trace: Any = field(default=None, repr=False)
    device: Any = None

    @classmethod
    def build(cls, program: Any, images: Any, labels: Any, cfg: Any, engine: str = "fast",
              critical_drop: float = DEFAULT_CRITICAL_DROP, batch_size: int | None = None, *,
              device: Any = None) -> "Evaluator":
        import torch

        on_cpu = device is None or torch.device(device).type == "cpu"
        if not on_cpu:
            images = images.to(device)  # once, not with every chip
        ev = cls(program, images, labels, cfg, engine, float(critical_drop),
                 None if batch_size is None else int(batch_size), device=None if on_cpu else device)
        if engine == "fast" and hasattr(program, "trace") and images.device.type == "cpu" and on_cpu:
            ev.trace = program.trace(images, cfg, batch_size=batch_size, max_bytes=TRACE_BYTES)
            clean = ev.trace.result
        else:
            clean = ev._run(None)
        ev.clean_predictions = clean.predictions.cpu()
        ev.clean_correct = int((ev.clean_predictions == labels.cpu()).sum())
        return ev

    @property
    def images_count(self) -> int:
        return int(len(self.labels))

    @property
    def clean_accuracy(self) -> float:
        return self.clean_correct / self.images_count

    def outcome(self, fm: Any) -> dict:
        """Accuracy, drop against the fault-free chip, SDC rate and criticality of chip ``fm``."""
        if fm.is_empty:
            pred = self.clean_predictions
        else:
            pred = self._run(fm).predictions.cpu()
        n = self.images_count
        correct = int((pred == self.labels.cpu()).sum())
        drop = (self.clean_correct - correct) / n
        return {"faulty_pes": fm.n_faulty_pes, "stuck_bits": len(fm),
                "registers": "+".join(r.value for r in fm.registers()) or "none",
                "accuracy": correct / n, "drop": drop, "sdc_rate": int((pred != self.clean_predictions).sum()) / n,
                "critical": int(drop > self.critical_drop)}

    def _run(self, fm: Any) -> Any:
        """The program's run on chip ``fm`` (None: fault-free), on this evaluator's device."""
        extra = {} if self.device is None else {"device": self.device}
        if self.trace is not None and fm is not None:
            extra["reference"] = self.trace
        return self.program.run(self.images, self.cfg, faults=fm, engine=self.engine, batch_size=self.batch_size,
                                count_changes=False, **extra)


def program_digest(program: Any, images: Any, labels: Any) -> str:
    """SHA-256 (hex) of a lowered program (every op's fields: tables, weights, constants) and of the
    images and labels it is judged on."""
    import dataclasses
    import hashlib

    h = hashlib.sha256()
    for op in program.ops:
        h.update(type(op).__name__.encode())
        for f in dataclasses.fields(op):
            value = getattr(op, f.name)
            if hasattr(value, "detach"):
                h.update(np.ascontiguousarray(value.detach().cpu().numpy()).tobytes())
            else:
                h.update(repr((f.name, value)).encode())
    h.update(repr((program.output_name, program.head_shape, program.output_qp)).encode())
    h.update(np.ascontiguousarray(images.detach().cpu().numpy()).tobytes())
    h.update(np.ascontiguousarray(labels.detach().cpu().numpy()).tobytes())
    return h.hexdigest()


@dataclass
class CheckpointTask:
    """A checkpoint judged on the first ``limit`` test images of its dataset (or ``dataset``)."""

    checkpoint: str
    dataset: str | None = None
    data_dir: str | None = None
    limit: int | None = None
    _prepared: Any = field(default=None, repr=False)

    def describe(self) -> dict:
        from accel_models.checkpoint import read_checkpoint

        check_positive_int(self.limit, "limit", "CheckpointTask", none_ok=True)
        name = self.dataset or read_checkpoint(self.checkpoint)["dataset"]
        out = {"model_sha256": file_sha256(self.checkpoint), "dataset": name, "split": "test", "limit": self.limit}
        from accel_models.data import DATASETS

        if name not in DATASETS and os.path.isfile(name):  # an own .npz file: a resume must see the same data
            out["dataset_sha256"] = file_sha256(name)
        return out

    def info(self) -> dict:
        return {"model": os.path.abspath(self.checkpoint), "data_dir": self.data_dir}

    def load(self) -> tuple[Any, Any, Any]:
        from accel_models.evaluation import prepare

        if self._prepared is None:
            self._prepared = prepare(self.checkpoint, self.dataset, self.data_dir, self.limit)
        t = self._prepared
        return t.program, t.images, t.labels

    def calibration(self, count: int) -> tuple[Any, Any]:
        """The first ``count`` training images and labels (sensitivity analysis; never the test split)."""
        self.load()
        data = self._prepared.dataset
        return data.train_x[:count], data.train_y[:count]


@dataclass
class ProgramTask:
    """A lowered program and its images/labels (benchmarks, scripts); hashed by content."""

    program: Any
    images: Any
    labels: Any
    name: str = "program"

    def describe(self) -> dict:
        return {"program": self.name, "sha256": program_digest(self.program, self.images, self.labels)}

    def info(self) -> dict:
        return {}

    def load(self) -> tuple[Any, Any, Any]:
        return self.program, self.images, self.labels

    def calibration(self, count: int) -> tuple[Any, Any]:
        return self.images[:count], self.labels[:count]


__all__ = ["CheckpointTask", "DEFAULT_CRITICAL_DROP", "Evaluator", "OUTCOME_COLUMNS", "ProgramTask", "TRACE_BYTES",
           "program_digest"]
