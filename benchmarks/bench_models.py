"""Users' own architectures on the chip: lowering time and the fast engine's cost over float32.

Run from the repository root::

    .venv/bin/python benchmarks/bench_models.py [--quick] [--repeats N] [--maps N] [--seed S] [--only NAME,...] [--out DIR]

For each architecture family of ``accel_models.zoo.families`` (compact re-implementations of
today's CNNs and vision transformers, random weights with BatchNorm statistics settled on the
images: the cost does not depend on them) at batch 8
on 3x64x64 inputs (a family that cannot take them uses its own default input), it measures in one
run:

- the lowering (``torch.export`` capture, calibration on the same 8 images, integer program);
- float32 torch inference of the model (``torch.no_grad``, eval mode), on torch's threads and on
  one thread: the faster is the baseline (on a small batch, waking the thread pool for every op
  can cost more than the threads give);
- the integer program fault-free on a 32x32 WS chip (fast engine);
- the integer program on ``--maps`` chips (default 3) with 1% psum-faulty PEs on random bits,
  without the extra fault-free GEMMs that count changed outputs (``count_changes=False``);

timed round-robin after ``WARMUP`` untimed calls (the engines settle their measured choices
of threads and kernels), and reports fault-free / float32 (target at most 3x) and
faulty / float32 (target at most 5x, median over the chips). Then it trains the zoo's
MobileNet-v2, MobileNet-v3 and ViT (``--zoo-dataset``, ``--zoo-epochs``) and compares the
fault-free chip's test accuracy with float's (target: within 1 point). Writes
``OUT/bench_models.json``.
The process is tuned with :func:`sysarray.runtime.configure` and float32 runs in it too.
"""
from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

import sysarray.runtime

TUNING = sysarray.runtime.configure()  # a program: tuned first, before torch loads

import numpy as np  # noqa: E402
import torch  # noqa: E402

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import float_and_chip_calls, format_table, provenance, time_once, time_round_robin, write_json  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FAULT_FREE_TARGET = 3.0
FAULTY_TARGET = 5.0
SHAPE = (3, 64, 64)
# Untimed calls first: the engines' measured choices (threads per run, serial or parallel kernels)
# take 8 calls per setting to settle, and the figures are the steady state.
WARMUP = 10
BATCH = 8


def _build(build, shape):
    """The family at ``shape`` if it takes it, else at its default input; returns (model, shape)."""
    try:
        model = build(input_shape=shape, num_classes=10).eval()
        with torch.no_grad():
            model(torch.rand(2, *shape))
        return model, shape
    except Exception:  # a family whose downsampling or guard needs its own size
        default = inspect.signature(build).parameters["input_shape"].default
        return build(input_shape=tuple(default), num_classes=10).eval(), tuple(default)


def measure(name: str, build, batch: int, repeats: int, seed: int, n_maps: int) -> dict:
    import sysarray as sa
    from accel_models.lowering import lower

    from accel_models.zoo.families import settle_batchnorm

    torch.manual_seed(seed)
    model, shape = _build(build, SHAPE)
    x = torch.rand(batch, *shape)
    settle_batchnorm(model, x)  # statistics as training leaves them (the top-1 agreement is then meaningful)
    lowering_s, program = time_once(lambda: lower(model, x))
    cfg = sa.ArrayConfig(32, 32, "ws")
    maps, calls = float_and_chip_calls(model, x, program, cfg, seed, n_maps)
    calls["float32_one_thread"] = lambda: _one_thread(calls["float32"])
    t = time_round_robin(calls, repeats, warmup=WARMUP)
    with torch.no_grad():
        agree = float((program.run(x, cfg).predictions == model(x).argmax(1)).double().mean())
    # float32's own best: torch's threads or one (small batches can lose more to waking the
    # thread pool than the threads give; the chip's runs choose the same way)
    fl = min(t["float32"]["median_s"], t["float32_one_thread"]["median_s"])
    faulty = [t[f"int_faulty_map{s}"]["median_s"] / fl for s in maps]
    kinds: dict[str, int] = {}
    for op in program.ops:
        kinds[type(op).__name__] = kinds.get(type(op).__name__, 0) + 1
    return {"model": name, "input": list(shape), "batch": batch, "array": "32x32 ws", "lowering_s": lowering_s,
            "float32_s": fl,
            "ops": kinds, "chip_layers": len(program.chip_layers), "timings": t,
            "top1_agreement_with_float": agree,
            "fault_free_over_float": t["int_fault_free"]["median_s"] / fl,
            "faulty_over_float": float(np.median(faulty)), "faulty_over_float_worst_map": max(faulty)}


def _one_thread(call):
    from sysarray.runtime import threads

    with threads(1):
        return call()


ZOO = ("mobilenetv2", "mobilenetv3", "vit")
ACCURACY_TARGET = 0.01  # the chip's fault-free accuracy within 1 point of float


def zoo_accuracy(name: str, dataset: str, epochs: int, seed: int) -> dict:
    """Train zoo model ``name`` on ``dataset`` and compare the fault-free chip's test accuracy
    (16x16 WS, calibration on the first 512 training images) with float's."""
    import sysarray as sa
    from accel_models.data import load_dataset
    from accel_models.lowering import lower
    from accel_models.train import train_zoo_model

    data = load_dataset(dataset)
    train_s, (model, history) = time_once(lambda: train_zoo_model(name, data, epochs, seed))
    model = model.cpu().eval()
    program = lower(model, data.train_x[:512])
    chip = program.run(data.test_x, sa.ArrayConfig(16, 16, "ws"), count_changes=False).accuracy(data.test_y)
    return {"model": name, "dataset": dataset, "epochs": epochs, "train_s": train_s,
            "float_accuracy": history["test_accuracy"], "chip_accuracy": chip,
            "drop": history["test_accuracy"] - chip}


def main(argv=None) -> int:
    from accel_models.zoo.families import FAMILIES

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 repeat and 1 chip (a smoke run)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--maps", type=int, default=3, metavar="N", help="faulty chips timed (default 3)")
    ap.add_argument("--seed", type=int, default=0, help="model, data and first fault map's seed (default 0)")
    ap.add_argument("--only", help="comma-separated family names (default: all of them)")
    ap.add_argument("--zoo-dataset", default="digits", help="dataset the zoo models train on (default digits)")
    ap.add_argument("--zoo-epochs", type=int, default=20,
                    help="training epochs of each zoo model (default 20; 0: no zoo training)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.maps < 1 or args.zoo_epochs < 0:
        ap.error(f"--repeats and --maps must be at least 1 and --zoo-epochs at least 0. Got {args.repeats}, "
                 f"{args.maps} and {args.zoo_epochs} instead.")
    names = list(FAMILIES) if not args.only else args.only.split(",")
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        ap.error(f"--only names unknown families {unknown}; known: {', '.join(FAMILIES)}.")
    repeats, n_maps = (1, 1) if args.quick else (args.repeats, args.maps)
    results = []
    for name in names:
        r = measure(name, FAMILIES[name], BATCH, repeats, args.seed, n_maps)
        results.append(r)
        print(f"{name}: lowering {r['lowering_s']:.2f} s, fault-free {r['fault_free_over_float']:.2f}x, "
              f"1% psum {r['faulty_over_float']:.2f}x float32", flush=True)
    rows = [(r["model"], "x".join(map(str, r["input"])), f"{r['lowering_s']:.2f}",
             f"{r['float32_s'] * 1e3:.1f}", f"{r['fault_free_over_float']:.2f}",
             f"{r['faulty_over_float']:.2f}", f"{r['top1_agreement_with_float']:.2f}") for r in results]
    print(format_table(["family", "input", "lowering s", "float32 ms", "fault-free / float", "1% psum / float",
                        "top-1 agreement"], rows))
    zoo = []
    for name in ZOO if args.zoo_epochs else ():
        z = zoo_accuracy(name, args.zoo_dataset, 1 if args.quick else args.zoo_epochs, args.seed)
        zoo.append(z)
        print(f"{name} on {z['dataset']} ({z['epochs']} epochs, {z['train_s']:.0f} s): float {z['float_accuracy']:.4f}, "
              f"chip {z['chip_accuracy']:.4f}", flush=True)
    write_json(Path(args.out) / "bench_models.json",
               {"benchmark": "bench_models", "batch": BATCH, "results": results, "zoo": zoo,
                "accuracy_target": ACCURACY_TARGET,
                "targets": {"fault_free_over_float": FAULT_FREE_TARGET, "faulty_over_float": FAULTY_TARGET},
                **provenance(TUNING, "quick" if args.quick else "full", REPO)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
