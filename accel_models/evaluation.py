"""A trained checkpoint on a chip: load, lower, run on the test split, summarise.

This is what ``sysarray run`` and the demo call; campaigns reuse :class:`ChipTask`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from accel_models.data import Dataset, load_dataset
from accel_models.lowering import lower
from accel_models.program import Program, RunResult
from sysarray.validation import check_positive_int

DEFAULT_CALIBRATION_IMAGES = 512


@dataclass
class ChipTask:
    """A lowered model and the images it is judged on."""

    model: torch.nn.Module
    program: Program
    dataset: Dataset
    images: torch.Tensor
    labels: torch.Tensor
    meta: dict

    @property
    def float_accuracy(self) -> float:
        with torch.no_grad():
            pred = torch.cat([self.model(self.images[i:i + 512]).argmax(1) for i in range(0, len(self.images), 512)])
        return float((pred == self.labels).double().mean())


def calibration_settings() -> dict:
    """The calibration a new checkpoint records (``extra["calibration"]``), which :func:`prepare` lowers with."""
    return {"images": DEFAULT_CALIBRATION_IMAGES, "split": "train", "method": "minmax"}


def calibration_images(dataset: Dataset, count: int = DEFAULT_CALIBRATION_IMAGES) -> torch.Tensor:
    """The first ``count`` training images: deterministic, never the test split."""
    return dataset.train_x[:count]


def prepare(checkpoint: str, dataset: str | None = None, data_dir: str | None = None,
            limit: int | None = None, percentile: float | None = None) -> ChipTask:
    """Load a checkpoint, its dataset (or ``dataset``), lower it with calibration on training
    images, and keep the first ``limit`` test images."""
    from accel_models.checkpoint import load_checkpoint

    model, meta = load_checkpoint(checkpoint)
    name = dataset or meta["dataset"]
    data = load_dataset(name, data_dir)
    shape = tuple(meta.get("input_shape") or data.input_shape)
    if tuple(data.input_shape) != shape:
        raise ValueError(
            f"The model in {checkpoint} takes {'x'.join(map(str, shape))} inputs but dataset '{name}' has "
            f"{'x'.join(map(str, data.input_shape))} images."
        )
    check_positive_int(limit, "limit", "prepare", none_ok=True)
    calib = meta.get("extra", {}).get("calibration", {}) if isinstance(meta.get("extra"), dict) else {}
    n_cal = int(calib.get("images", DEFAULT_CALIBRATION_IMAGES))
    program = lower(model, calibration_images(data, n_cal), percentile=calib.get("percentile", percentile))
    n = len(data.test_x) if limit is None else min(limit, len(data.test_x))
    return ChipTask(model=model.eval(), program=program, dataset=data, images=data.test_x[:n],
                    labels=data.test_y[:n], meta=meta)


def chip_summary(result: RunResult, labels: torch.Tensor, n_pes: int) -> dict:
    """Accuracy (fraction), cycles and utilization of one run, JSON-ready."""
    return {
        "accuracy": result.accuracy(labels),
        "cycles": result.cycles,
        "overall_util": result.overall_util(n_pes),
        "layers": [layer.to_dict() for layer in result.layers],
    }


def run_on_chip(task: ChipTask, cfg, faults=None, engine: str = "fast") -> dict:
    """Accuracy, cycles and utilization of ``task`` on one chip; with faults, the fault-free
    accuracy and the share of images whose top-1 changed (SDC rate) too."""
    t0 = time.perf_counter()
    res = task.program.run(task.images, cfg, faults=faults, engine=engine)
    out = chip_summary(res, task.labels, cfg.rows * cfg.cols)
    out["seconds"] = time.perf_counter() - t0
    out["images"] = int(len(task.images))
    if faults is not None and not faults.is_empty:
        clean = task.program.run(task.images, cfg.replace(bypass=False), faults=None, engine="fast")
        out["clean_accuracy"] = clean.accuracy(task.labels)
        out["sdc_rate"] = float((clean.predictions != res.predictions).double().mean())
        out["faulty_pes"] = faults.n_faulty_pes
        out["stuck_bits"] = len(faults)
    return out
