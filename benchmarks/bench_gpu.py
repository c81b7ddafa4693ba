"""The fast engine, campaigns and stuck-at FAT on a CUDA GPU, against float32 torch on the same GPU.

Run from the repository root, on a machine with a CUDA GPU and a CUDA-enabled torch::

    .venv/bin/python benchmarks/bench_gpu.py [--quick] [--repeats N] [--maps N] [--chips N] [--out DIR]

In one run, on the first CUDA device (``torch.cuda.synchronize()`` ends every timed call):

- inference: LeNet-5 and ResNet-20 (32x32 inputs, batch 256, untrained weights) in float32 torch
  and their integer programs (``Program.run(..., device="cuda")``) on a 32x32 WS chip, fault-free
  and on ``--maps`` chips (default 5) with 1% psum-faulty PEs, the images already on the GPU for
  both, timed round-robin. Faulty / float32 is the
  median over the chips; target: ResNet-20 at most 2x. Every chip's logits are checked equal to
  the CPU engine's, bit for bit.
- campaign: LeNet-5 on ``--chips`` chips (default 32; 1% psum-faulty PEs, 16x16 WS, 256 random
  images) with ``run_campaign(device="cuda")``; its ``results.csv`` is checked byte-identical to
  the same campaign run on the CPU. Reports the GPU's seconds per chip (after the fault-free run)
  over one fault-free GPU inference.
- FAT: one stuck-at FAT epoch (LeNet-5 trained briefly on ``digits``, batch 64, 2% psum-faulty PEs on
  a 16x16 WS array) against one float32 training epoch of the same model and batch, both on the
  GPU, round-robin. The twin's forward on the GPU with the chip's hook is checked equal to the
  integer program's logits.

- kernels: which exact product (int8 tensor cores or float64) each shape class of the runs above
  measured faster on this GPU.

``--device cpu`` runs the same steps on the CPU as a dry run of the script and writes nothing.
Otherwise writes ``OUT/bench_gpu.json``, with the card's name and CUDA version.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import sysarray.runtime

TUNING = sysarray.runtime.configure()  # a program: tuned first, before torch loads

import numpy as np  # noqa: E402
import torch  # noqa: E402

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (  # noqa: E402
    float_and_chip_calls, format_table, provenance, time_round_robin, train_base_model, write_json,
)

REPO = Path(__file__).resolve().parent.parent
TARGET = 2.0  # faulty ResNet-20 on the GPU over float32 CUDA inference of the same batch
PE_RATE = 0.01


def synced(fn, dev: torch.device):
    """``fn`` followed by a wait for the GPU's queued work (timings then cover the work itself)."""
    if dev.type != "cuda":
        return fn

    def call():
        out = fn()
        torch.cuda.synchronize(dev)
        return out
    return call


def gpu_info(dev: torch.device) -> dict:
    """The card this run measured (name, compute capability, memory, CUDA and cuDNN versions)."""
    if dev.type != "cuda":
        return {"name": "none (CPU dry run)"}
    p = torch.cuda.get_device_properties(dev)
    return {"name": p.name, "capability": f"{p.major}.{p.minor}", "memory_gib": round(p.total_memory / 2**30, 1),
            "multiprocessors": p.multi_processor_count, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version()}


def cuda_product_choices() -> dict[str, dict[str, str]]:
    """The exact products' kernel chosen on the GPU (int8 tensor cores or float64) per choice and
    shape key (as JSON text), as this run measured them."""
    from sysarray.engines import int8

    return {name: {json.dumps(list(key)): option for key, option in chosen.items()}
            for name, chosen in int8.cuda_decisions().items()}


def inference(name: str, shape, batch: int, repeats: int, seed: int, n_maps: int, dev: torch.device) -> dict:
    """Float32 on ``dev`` against the integer program on ``dev``, fault-free and faulty, each chip's
    logits checked against the CPU engine's."""
    import sysarray as sa
    from accel_models.lowering import lower
    from accel_models.zoo import build_model

    torch.manual_seed(seed)
    model = build_model(name, shape, 10).eval()
    x = torch.rand(batch, *shape)
    program = lower(model, x)
    cfg = sa.ArrayConfig(32, 32, "ws")
    maps, calls = float_and_chip_calls(copy.deepcopy(model).to(dev), x.to(dev), program, cfg, seed, n_maps, dev)
    for s, fm in maps.items():
        on_dev = program.run(x, cfg, faults=fm, count_changes=False, device=dev).logits.cpu()
        if not torch.equal(on_dev, program.run(x, cfg, faults=fm, count_changes=False).logits):
            raise AssertionError(f"{name}: the chip of map seed {s} gives other logits on {dev} than on the CPU")
    t = time_round_robin({k: synced(f, dev) for k, f in calls.items()}, repeats)
    base = t["float32"]["median_s"]
    ratios = [t[f"int_faulty_map{s}"]["median_s"] / base for s in maps]
    return {"model": name, "input": list(shape), "batch": batch, "array": "32x32 ws", "timings": t,
            "fault_free_over_float": t["int_fault_free"]["median_s"] / base,
            "faulty_over_float": float(np.median(ratios)), "faulty_over_float_worst_map": max(ratios),
            "exact_against_cpu": True}


def campaign(chips: int, seed: int, dev: torch.device, repeats: int) -> dict:
    """A LeNet-5 campaign on ``dev`` against the same campaign on the CPU (byte-identical results)."""
    import sysarray as sa
    from accel_models.lowering import lower
    from accel_models.zoo import build_model
    from mitigation.campaign import FaultGroup, ProgramTask, RateGrid, run_campaign

    torch.manual_seed(seed)
    model = build_model("lenet5", (1, 32, 32), 10).eval()
    images = torch.rand(256, 1, 32, 32)
    labels = torch.randint(0, 10, (256,))
    program = lower(model, images)
    task = ProgramTask(program, images, labels, "lenet5-random")
    cfg = sa.ArrayConfig(16, 16, "ws")
    population = RateGrid([PE_RATE], chips, seed, [FaultGroup(("psum",))])
    with tempfile.TemporaryDirectory() as tmp:
        on_dev = run_campaign(task, population, f"{tmp}/dev", cfg, workers=1, device=dev)
        run_campaign(task, population, f"{tmp}/cpu", cfg, workers=1)
        same = Path(f"{tmp}/dev/results.csv").read_bytes() == Path(f"{tmp}/cpu/results.csv").read_bytes()
    if not same:
        raise AssertionError(f"the campaign's results.csv on {dev} differs from the CPU's")
    clean = time_round_robin({"fault_free": synced(lambda: program.run(images, cfg, count_changes=False, device=dev),
                                                   dev)}, repeats)["fault_free"]["median_s"]
    per_chip = (on_dev.seconds - on_dev.setup_s) / max(1, on_dev.evaluated)
    return {"workload": "lenet5", "chips": chips, "images": 256, "array": "16x16 ws", "seconds": on_dev.seconds,
            "setup_s": on_dev.setup_s, "seconds_per_chip": per_chip, "fault_free_s": clean,
            "cost_per_chip_over_fault_free": per_chip / clean, "identical_to_cpu": True}


def fat_epoch(repeats: int, dev: torch.device, folder: Path) -> dict:
    """One stuck-at FAT epoch over one float32 epoch, both on ``dev``; the twin checked exact there."""
    from accel_models.evaluation import prepare
    from accel_models.train import train
    from mitigation.fat import ZooTwin, chip_hook, stuckat_fat
    from sysarray import ArrayConfig, FaultMap

    ckpt, _ = train_base_model("lenet5", "digits", 3, folder / "lenet5-digits.pt")
    task = prepare(ckpt)
    x, y = task.dataset.train_x, task.dataset.train_y
    cfg = ArrayConfig(16, 16, "ws")
    fm = FaultMap.random(cfg, pe_rate=0.02, registers=("psum",), seed=1)
    model = copy.deepcopy(task.model).to(dev)
    with torch.no_grad():
        logits = ZooTwin(task.program, model)(task.images.to(dev), gemm_hook=chip_hook(cfg, fm)).cpu()
    if not torch.equal(logits, task.program.run(task.images, cfg, faults=fm).logits):
        raise AssertionError(f"the twin with the chip's hook on {dev} differs from the integer program")
    calls = {"float32": lambda: train(copy.deepcopy(model), x, y, epochs=1, seed=0, progress=False, device=dev),
             "stuckat": lambda: stuckat_fat(model, task.program, cfg, fm, x, y, 1)}
    t = time_round_robin({k: synced(f, dev) for k, f in calls.items()}, repeats)
    return {"model": "lenet5", "dataset": "digits", "images": len(x), "batch": 64, "faulty_pes": fm.n_faulty_pes,
            "timings": t, "stuckat_over_float": t["stuckat"]["median_s"] / t["float32"]["median_s"],
            "twin_exact": True}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="batch 32, 2 repeats, 2 chips and 8 campaign chips (a smoke run)")
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--maps", type=int, default=5, metavar="N", help="faulty chips timed per model (default 5)")
    ap.add_argument("--chips", type=int, default=32, metavar="N", help="the campaign's chips (default 32)")
    ap.add_argument("--seed", type=int, default=0, help="models, data and fault maps' seed (default 0)")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                    help="cuda (default), or cpu: a dry run of the script that writes nothing")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    if min(args.repeats, args.maps, args.chips) < 1:
        ap.error(f"--repeats, --maps and --chips must be at least 1. Got {args.repeats}, {args.maps} and "
                 f"{args.chips} instead.")
    if args.device == "cuda":
        from sysarray.validation import cuda_unavailable

        why = cuda_unavailable()
        if why is not None:
            print(f"bench_gpu: needs a CUDA GPU; this torch {torch.__version__} {why}. "
                  "Use --device cpu for a dry run.", file=sys.stderr)
            return 2
    dev = torch.device(args.device)
    batch, repeats = (32, 2) if args.quick else (256, args.repeats)
    n_maps, chips = (2, 8) if args.quick else (args.maps, args.chips)
    results = [inference(n, s, batch, repeats, args.seed, n_maps, dev)
               for n, s in (("lenet5", (1, 32, 32)), ("resnet20", (3, 32, 32)))]
    camp = campaign(chips, args.seed, dev, repeats)
    with tempfile.TemporaryDirectory() as tmp:
        fat = fat_epoch(min(repeats, 5), dev, Path(tmp))
    card = gpu_info(dev)
    rows = [(r["model"], r["batch"], r["timings"]["float32"]["median_s"] * 1e3,
             r["timings"]["int_fault_free"]["median_s"] * 1e3, round(r["fault_free_over_float"], 2),
             round(r["faulty_over_float"], 2), round(r["faulty_over_float_worst_map"], 2),
             TARGET if r["model"] == "resnet20" else "") for r in results]
    print(format_table(["model", "batch", "float32 ms", "int fault-free ms", "fault-free/float", "faulty/float",
                        "worst chip", "target"], rows,
                       title=f"Inference on {card['name']} (32x32 WS, fast engine; medians over {n_maps} chips with "
                             f"1% psum-faulty PEs; logits equal to the CPU's)"))
    print(f"campaign: {camp['chips']} LeNet-5 chips, {camp['seconds_per_chip'] * 1e3:.1f} ms per chip, "
          f"{camp['cost_per_chip_over_fault_free']:.2f}x one fault-free inference; results identical to the CPU's")
    print(f"stuck-at FAT epoch / float32 epoch: {fat['stuckat_over_float']:.2f}x ({fat['images']} images, batch 64)")
    kernels = cuda_product_choices()
    for name, chosen in kernels.items():
        counts = {option: list(chosen.values()).count(option) for option in sorted(set(chosen.values()))}
        print(f"{name} on the GPU: {counts or 'no shape measured'} (shape classes per kernel)")
    if dev.type != "cuda":
        print("dry run on the CPU: nothing written")
        return 0
    write_json(Path(args.out) / "bench_gpu.json",
               {"benchmark": "bench_gpu", "gpu": card, "results": results, "campaign": camp, "fat": fat,
                "product_kernels": kernels,
                "target": TARGET, **provenance(TUNING, "quick" if args.quick else "full", REPO)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
