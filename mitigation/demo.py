"""The main demo: a trained LeNet-5 on the bundled digits, on a fault-free chip, on faulty chips,
on the same faulty chips with the faulty PEs bypassed (fault-aware pruning, FAP), and with the
pruned model retrained for each chip (FAP+T)."""
from __future__ import annotations

import os

from accel_models.evaluation import prepare, run_on_chip

DEMO_CHECKPOINT = os.path.join(".cache", "demo", "lenet5-digits.pt")


def ensure_model(path: str = DEMO_CHECKPOINT, epochs: int = 40, seed: int = 0) -> str:
    """Train the demo LeNet-5 on digits once and reuse the checkpoint afterwards: training is the
    demo's one slow step, so later runs go straight to the chips."""
    if os.path.exists(path):
        return path
    from accel_models.checkpoint import save_checkpoint
    from accel_models.data import load_dataset
    from accel_models.evaluation import DEFAULT_CALIBRATION_IMAGES
    from accel_models.train import train_zoo_model

    data = load_dataset("digits")
    print(f"training LeNet-5 on digits ({epochs} epochs, seed {seed}) -> {path}")
    model, history = train_zoo_model("lenet5", data, epochs, seed, progress=True)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_checkpoint(path, model, dataset=data, preprocessing=data.preprocessing, history=history,
                    extra={"calibration": {"images": DEFAULT_CALIBRATION_IMAGES, "split": "train", "method": "minmax"}})
    return path


FAPT_EPOCHS = 5


def run_demo(path: str = DEMO_CHECKPOINT, rates=(0.01, 0.03, 0.05), seed: int = 0) -> list[dict]:
    """Print and return the demo table."""
    import sysarray as sa
    from mitigation.fat import fault_aware_train

    task = prepare(ensure_model(path))
    cfg = sa.ArrayConfig.preset("gemmini16").replace(psum_bits=32)
    rows = []
    clean = run_on_chip(task, cfg)
    rows.append(dict(chip="fault-free", pes=0, mode="-", accuracy=clean["accuracy"], cycles=clean["cycles"]))
    for rate in rates:
        fm = sa.FaultMap.random(cfg, pe_rate=rate, registers=("psum",), bits=range(24, 32), values=(1,), seed=seed)
        for bypass in (False, True):
            out = run_on_chip(task, cfg.replace(bypass=bypass), fm)
            rows.append(dict(chip=f"{rate:.0%} faulty PEs", pes=fm.n_faulty_pes,
                             mode="bypass (pruned)" if bypass else "as is", accuracy=out["accuracy"],
                             cycles=out["cycles"]))
        _, report = fault_aware_train(task, cfg.replace(bypass=True), fm, "fapt", FAPT_EPOCHS, seed=seed)
        rows.append(dict(chip=f"{rate:.0%} faulty PEs", pes=fm.n_faulty_pes, mode="bypass + retrained",
                         accuracy=report.accuracy_after, cycles=out["cycles"]))
    print()
    print(f"LeNet-5 on digits ({len(task.images)} test images), int8 on a {cfg} array")
    print(f"float model accuracy {task.float_accuracy:.2%}; faults: psum bits 24-31 stuck at 1")
    print()
    print(f"{'chip':<18} {'faulty PEs':>10}  {'faulty PEs are':<18} {'accuracy':>8}  {'cycles':>9}")
    for r in rows:
        print(f"{r['chip']:<18} {r['pes']:>10}  {r['mode']:<18} {r['accuracy']:>8.2%}  {r['cycles']:>9,}")
    print()
    print("A stuck-at-1 high bit in one PE's partial-sum register corrupts every output that passes "
          "its column; bypassing the faulty PEs (and so pruning the weights they hold) keeps most of "
          f"the accuracy, and {FAPT_EPOCHS} epochs of retraining with that pruning mask (FAP+T) recover "
          "most of the rest. Try `sysarray run --help`, `sysarray campaign --help` and `sysarray fat --help`.")
    return rows
