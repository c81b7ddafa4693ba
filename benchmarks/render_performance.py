"""Write docs/performance.md from the benchmarks' JSON files; the page is never edited by hand.

Run from the repository root after the benchmarks (or ``make perf-doc``)::

    .venv/bin/python benchmarks/render_performance.py [--results DIR] [--out FILE]

For each benchmark the page has a paragraph on what it measures, a table with one row per figure
(value, the project's target where it has one, and whether the figure meets it), the machine the
JSON came from (CPU model, ISA flags, cores, date, library versions, what
``sysarray.runtime.configure()`` reported) and the command that produced it. A benchmark whose
JSON is missing or unreadable is listed as "not measured". The page depends only on the JSON
files, so rendering the same files twice gives the same page.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

if __package__ in (None, ""):  # run as a script: make `benchmarks._common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import describe_tuning, fastest_exact_gemm, format_value  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_RESULTS = REPO / "benchmarks" / "results"
DEFAULT_OUT = REPO / "docs" / "performance.md"
COMMAND = ".venv/bin/python benchmarks/render_performance.py"
MODELS = {"lenet5": "LeNet-5", "resnet20": "ResNet-20"}
GEMM_NAMES = {"int_mm": "`torch._int_mm`", "exact_matmul": "exact float32 GEMM"}


@dataclass(frozen=True)
class Target:
    """A figure's bound: ``op`` is "<=" or ">=", ``unit`` follows the bound in the page."""

    op: str
    bound: float
    unit: str = ""

    def met(self, value: float) -> bool:
        return value <= self.bound if self.op == "<=" else value >= self.bound

    def __str__(self) -> str:
        return f"{self.op} {_short_exponent(f'{self.bound:g}')}{self.unit}"


Row = tuple[str, str, str, str]  # metric, value, target, met


def number(v: Any) -> str:
    """A figure as the page shows it: three significant digits, exponents as ``3.03e9``."""
    return "n/a" if v is None else _short_exponent(format_value(v))


def _short_exponent(text: str) -> str:
    m = re.fullmatch(r"(-?[\d.]+)e([+-]\d+)", text)
    return f"{m[1]}e{int(m[2])}" if m else text


def row(metric: str, value: Any, unit: str = "", target: Target | None = None, scale: float = 1.0) -> Row:
    """One table row; ``value`` None (absent from the JSON) shows as n/a, scaled by ``scale`` otherwise."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = value * scale if scale != 1.0 else value
        shown = number(value) + unit
        met = "" if target is None else ("yes" if target.met(value) else "**no**")
    else:
        shown = number(value) if value is None or isinstance(value, bool) else str(value)
        met = ""
    return metric, shown, "" if target is None else str(target), met


def dig(d: Any, *keys: Any) -> Any:
    """``d[k0][k1]...``, or None where a key or index is missing."""
    for k in keys:
        try:
            d = d[k]
        except (KeyError, IndexError, TypeError):
            return None
    return d


# --------------------------------------------------------------------------- per benchmark
def engines_rows(d: dict) -> list[Row]:
    rows: list[Row] = []
    for r in d.get("cycle", []):
        where = f"Cycle engine, WS {r['array']}, GEMM {r['M']}x{r['K']}x{r['N']}"
        tgt = Target(">=", r["target_updates_per_s"]) if "target_updates_per_s" in r else None
        rows += [row(f"{where}, fault-free: PE-register updates/s", dig(r, "updates_per_s", "engine_fault_free"),
                     target=tgt),
                 row(f"{where}, 1% faulty PEs (psum, act): PE-register updates/s",
                     dig(r, "updates_per_s", "engine_faulty"), target=tgt),
                 row(f"{where}, fault-free, one numba thread: PE-register updates/s",
                     dig(r, "updates_per_s", "engine_fault_free_1thread")),
                 row(f"{where}, fault-free: speed-up over the naive single-threaded clock loop",
                     dig(r, "speedup_vs_naive", "fault_free"), "x")]
    rn = d.get("resnet18") or {}
    for key, label in (("fault_free", "fault-free"), ("faulty_1pct_psum_act", "1% faulty PEs (psum, act)")):
        rows.append(row(f"ResNet-18 {rn.get('image')}x{rn.get('image')}, batch 1, clocked with values on WS 32x32, "
                        f"{label}: seconds", dig(rn, "variants", key, "total_s"), " s"))
    rows.append(row("ResNet-18: cycles", dig(rn, "variants", "fault_free", "total_cycles")))
    for r in d.get("fast", []):
        where = f"Fast engine, WS 32x32, GEMM {r['M']}x{r['K']}x{r['N']}"
        q = r.get("ratios", {})
        sec = r.get("seconds", {})
        name, fastest = fastest_exact_gemm(sec)  # from the seconds: older files have no such ratio
        rows += [row(f"{where}, 1% psum-faulty PEs / this machine's fastest exact GEMM ({GEMM_NAMES[name]})",
                     sec["d"] / fastest, "x", Target("<=", 3, "x")),
                 row(f"{where}, 1% psum-faulty PEs / `torch._int_mm`", q.get("d/a"), "x"),
                 row(f"{where}, 1% psum-faulty PEs / exact float32 GEMM", q.get("d/b"), "x"),
                 row(f"{where}, 1% faulty PEs (any register) / exact float32 GEMM", q.get("e/b"), "x"),
                 row(f"{where}, fault-free / exact float32 GEMM", q.get("c/b"), "x")]
    for r in d.get("dataflows", []):
        where = f"Fast engine by dataflow, {r['dataflow'].upper()} 32x32, GEMM {r['M']}x{r['K']}x{r['N']}"
        rows += [row(f"{where}, fault-free / exact float32 GEMM", dig(r, "ratios", "c/b"), "x"),
                 row(f"{where}, 1% psum-faulty PEs / exact float32 GEMM", dig(r, "ratios", "d/b"), "x")]
    calls = dig(d, "jit", "calls") or []
    if calls:
        how = "compile, fresh numba cache" if dig(d, "jit", "fresh_cache") else "compile or numba cache load"
        rows.append(row(f"Slowest first call of an engine ({how})", max(c["first_call_s"] for c in calls), " s"))
    rows.append(row("Every result verified bit for bit", d.get("verified")))
    return rows


def inference_rows(d: dict) -> list[Row]:
    target = Target("<=", d.get("target", 2.0), "x")
    rows: list[Row] = []
    for r in d.get("results", []):
        head = f"{MODELS.get(r['model'], r['model'])}, batch {r['batch']}"
        chips = f"median over {len(r.get('maps', []))} chips"
        rows += [row(f"{head}: float32 torch inference, ms", dig(r, "timings", "float32", "median_s"), " ms",
                     scale=1e3),
                 row(f"{head}: integer, fault-free / float32", r.get("fault_free_over_float"), "x"),
                 row(f"{head}: integer, 1% psum-faulty PEs / float32 ({chips})", r.get("faulty_over_float"), "x",
                     target),
                 row(f"{head}: integer, 1% psum-faulty PEs / float32, worst chip", r.get("faulty_over_float_worst_map"),
                     "x"),
                 row(f"{head}: integer, 1% psum-faulty PEs / float32 under torch's own defaults ({chips})",
                     r.get("faulty_over_float_torch_defaults"), "x", target),
                 row(f"{head}: integer, 1% psum-faulty PEs / float32 under torch's own defaults, worst chip",
                     r.get("faulty_over_float_torch_defaults_worst_map"), "x"),
                 row(f"{head}: integer, 1% psum-faulty PEs, without / with `sysarray.runtime.configure()` ({chips})",
                     r.get("untuned_over_tuned"), "x")]
    return rows


def models_rows(d: dict) -> list[Row]:
    targets = d.get("targets", {})
    free, faulty = Target("<=", targets.get("fault_free_over_float", 3.0), "x"), \
        Target("<=", targets.get("faulty_over_float", 5.0), "x")
    rows: list[Row] = []
    for r in d.get("results", []):
        head = f"{r['model']}, {'x'.join(map(str, r['input']))}, batch {r['batch']}"
        rows += [row(f"{head}: lowering, s", r.get("lowering_s"), " s"),
                 row(f"{head}: float32 torch inference (the faster of torch's threads and one), ms",
                     r.get("float32_s", dig(r, "timings", "float32", "median_s")), " ms", scale=1e3),
                 row(f"{head}: integer, fault-free / float32", r.get("fault_free_over_float"), "x", free),
                 row(f"{head}: integer, 1% psum-faulty PEs / float32 (median over chips)", r.get("faulty_over_float"),
                     "x", faulty)]
    drop = Target("<=", d.get("accuracy_target", 0.01))
    for z in d.get("zoo", []):
        head = f"zoo {z['model']} on {z['dataset']}, {z['epochs']} epochs"
        rows += [row(f"{head}: float32 test accuracy", z.get("float_accuracy")),
                 row(f"{head}: fault-free chip test accuracy (16x16 WS)", z.get("chip_accuracy")),
                 row(f"{head}: float32 - chip accuracy", z.get("drop"), "", drop)]
    return rows


def campaign_rows(d: dict) -> list[Row]:
    targets = d.get("targets", {})
    cost = Target("<=", targets.get("cost_per_chip_over_fault_free", 1.5), "x")
    eff = Target(">=", targets.get("parallel_efficiency", 0.85))
    rows: list[Row] = []
    for r in d.get("results", []):
        head = f"{MODELS.get(r['workload'], r['workload'])}, {r['chips']} chips"
        rows += [row(f"{head}: chips per minute, 1 worker", r.get("chips_per_min_1_worker")),
                 row(f"{head}: chips per minute, 2 workers", r.get("chips_per_min_2_workers")),
                 row(f"{head}: cost per chip / one fault-free inference", r.get("cost_per_chip_over_fault_free"), "x",
                     cost),
                 row(f"{head}: faulty inference / fault-free inference", r.get("faulty_over_fault_free"), "x"),
                 row(f"{head}: 2-worker parallel efficiency", r.get("parallel_efficiency"), target=eff),
                 row(f"{head}: 2-worker parallel efficiency, steady state", r.get("parallel_efficiency_steady"))]
    rows.append(row("Campaign fork server start-up (once per process, outside the campaign walls)",
                    d.get("fork_server_start_s"), " s"))
    return rows


CLIP_METHODS = ("none", "ranger", "ftclipact", "fitact", "proact")  # the page's order (the JSON's keys are sorted)
CLIP_SETTINGS = {"chip_os": "(a) OS chip, psum bits 24-30 stuck at 1, PE rate",
                 "memory": "(b) int8 weight-memory bit flips, BER",
                 "chip_ws": "(c) WS chip, same faults, PE rate",
                 "memory_float32": "(d) float32 weight-memory bit flips, BER"}


def _by_method(d: dict) -> list[tuple[str, Any]]:
    """``d``'s items, methods in :data:`CLIP_METHODS` order (variants such as ftclipact-chip by name)."""
    def key(name: str) -> tuple[int, str]:
        base = name.split("-")[0]
        return (CLIP_METHODS.index(base) if base in CLIP_METHODS else len(CLIP_METHODS), name)
    return sorted(((k, v) for k, v in d.items() if k != "rates"), key=lambda kv: key(kv[0]))


def clipping_rows(d: dict) -> list[Row]:
    rows: list[Row] = []
    for model, r in d.get("results", {}).items():
        for method, acc in _by_method(r.get("clean", {})):
            rows.append(row(f"{model}, {method}: fault-free accuracy on the chip, %", acc))
        for method, m in _by_method(r.get("methods", {})):
            rows.append(row(f"{model}, {method}: clipping thresholds (share of parameters), search seconds",
                            f"{m['thresholds']} ({m['overhead']:.3%}), {number(m['seconds'])} s"))
        for key, title in CLIP_SETTINGS.items():
            sec = r.get(key)
            if not sec:
                continue
            rates = " / ".join(_short_exponent(f"{x:g}") for x in sec["rates"])
            for method, curve in _by_method(sec):
                value = " / ".join(f"{number(m)} ({number(w)})" for m, w in zip(curve["mean"], curve["worst"]))
                rows.append(row(f"{model}, {title} {rates}, {method}: accuracy %, mean (worst chip)", value))
    return rows


def _count(v: Any) -> Any:
    """Epoch counts, which the cost report keeps as floats, as integers where they are whole."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


def fat_rows(d: dict) -> list[Row]:
    rows: list[Row] = []
    for e in d.get("results", []):
        for kind, cost in e.get("populations", {}).items():
            c = {k: _count(v) for k, v in cost.items()}
            head = f"{e['dataset']}, {len(c.get('chip_rates', []))} chips, {kind} faults"
            rows += [row(f"{head}: retraining epochs, conventional FAT", c.get("conventional_epochs")),
                     row(f"{head}: retraining epochs, per-chip FAT", c.get("per_chip_epochs")),
                     row(f"{head}: retraining epochs, eFAT planned / with repairs",
                         f"{number(c.get('efat_planned_epochs'))} / {number(c.get('efat_epochs'))}"),
                     row(f"{head}: eFAT groups", c.get("groups")),
                     row(f"{head}: resilience-map epochs", c.get("map_epochs")),
                     row(f"{head}: rejected chips / accuracy violations",
                         f"{len(c.get('rejected', []))} / {len(c.get('violations', []))}")]
        ec = e.get("epoch_cost") or {}
        rows += [row(f"{e['dataset']}: one FAP+T epoch / one float32 epoch", ec.get("fapt_over_float"), "x"),
                 row(f"{e['dataset']}: one stuck-at FAT epoch / one float32 epoch", ec.get("stuckat_over_float"), "x",
                     Target("<=", 1.5, "x"))]
    r = d.get("resnet20_epoch_cost") or {}
    if r:
        head = f"ResNet-20, {r.get('images')} random 3x32x32 images"
        rows += [row(f"{head}: one FAP+T epoch / one float32 epoch", r.get("fapt_over_float"), "x"),
                 row(f"{head}: one stuck-at FAT epoch / one float32 epoch", r.get("stuckat_over_float"), "x",
                     Target("<=", 1.5, "x"))]
    return rows


def gpu_rows(d: dict) -> list[Row]:
    target = Target("<=", d.get("target", 2.0), "x")
    rows: list[Row] = []
    for r in d.get("results", []):
        head = f"{MODELS.get(r['model'], r['model'])}, batch {r['batch']}"
        rows += [row(f"{head}: float32 CUDA inference, ms", dig(r, "timings", "float32", "median_s"), " ms", scale=1e3),
                 row(f"{head}: integer, fault-free / float32", r.get("fault_free_over_float"), "x"),
                 row(f"{head}: integer, 1% psum-faulty PEs / float32 (median over chips)", r.get("faulty_over_float"),
                     "x", target if r["model"] == "resnet20" else None),
                 row(f"{head}: integer, 1% psum-faulty PEs / float32, worst chip", r.get("faulty_over_float_worst_map"),
                     "x"),
                 row(f"{head}: every chip's logits equal to the CPU engine's", r.get("exact_against_cpu"))]
    c = d.get("campaign") or {}
    if c:
        head = f"{MODELS.get(c['workload'], c['workload'])} campaign, {c['chips']} chips"
        rows += [row(f"{head}: cost per chip / one fault-free inference", c.get("cost_per_chip_over_fault_free"), "x"),
                 row(f"{head}: results.csv identical to the CPU's", c.get("identical_to_cpu"))]
    f = d.get("fat") or {}
    if f:
        rows += [row(f"{f['dataset']}: one stuck-at FAT epoch / one float32 epoch", f.get("stuckat_over_float"), "x"),
                 row(f"{f['dataset']}: the twin with the chip's hook equal to the integer program",
                     f.get("twin_exact"))]
    for name, chosen in (d.get("product_kernels") or {}).items():
        won = sum(option == "int8" for option in chosen.values())
        rows.append(row(f"Exact products (`{name}`): shape classes won by the int8 tensor cores / measured",
                        f"{won} / {len(chosen)}"))
    return rows


def cli_rows(d: dict) -> list[Row]:
    target = Target("<=", d.get("target_s", 0.5), " s")
    runs = d.get("repeats")
    return [row(f"`{r['command']}`: wall time of a fresh process (median of {runs})", r.get("median_s"), " s", target)
            for r in d.get("results", [])]


@dataclass(frozen=True)
class Bench:
    """One benchmark's section; ``misses``: per results folder ("" the main one, else a machine's
    subfolder), why its figures miss their targets there, the profile behind it and what would
    close it, shown when a row of that machine's table misses."""

    name: str
    title: str
    measures: str
    rows: Callable[[dict], list[Row]]
    misses: Mapping[str, str] = field(default_factory=dict)
    absent: str = ""  # why the figures may be missing, shown with "Not measured"


ENGINES_MISSES = (
    "Where the fast engine misses (M=12544, K=576, N=64, 32x32 WS, 1% psum-faulty PEs, 2 threads, steady state): "
    "`torch._int_mm` of int8 operands takes 0.6-1.9 ms and the engine's fault-free product 1.7-2.5 times that: "
    "the uint8 codes shifted to int8 (one pass over the 7 MB stream), the same int8 GEMM and the weights' sums "
    "added back, and Python around them. The psum replay adds about as much "
    "again: the stream packed once into words of four rows' codes (about 1 ms) and the chains by `vpdpbusd` "
    "(about 1 ms; the float32 and oneDNN replays took 22-30 ms, as each fold is a GEMM of inner size 32 far from "
    "oneDNN's peak). What would close it: int8 codes end to end (no shift; torch exposes no uint8 x int8 GEMM, "
    "which oneDNN has) and the packing fused into the GEMM's own pass over the stream.")
INFERENCE_MISSES = (
    "Where inference and campaigns miss: fault-free, ResNet-20 at batch 256 (2 threads) runs at about float32's "
    "speed, and with 1% psum-faulty PEs (about 10 faulty PEs on 32 columns, so a quarter to a third of every "
    "layer's channels replayed) a run spends about 39% of its time in the convolutions, 26% replaying the faulty "
    "columns' outputs (mostly the VNNI kernel, one `vpdpbusd` per kernel row and 16 run values), 23% requantizing "
    "(the replayed outputs applied in the same pass, by tiles corrected in L1) and 8% in residual adds (py-spy "
    "samples). Per replayed output the VNNI replay costs about 0.2 ms on a 227x16x32x32 layer against 0.34 ms "
    "per output channel for float32's whole convolution, but it reads only the taps up to the faulty row and "
    "still costs more than half of that. What would close it: the replay sharing one pass over the input with "
    "the convolution (an int8 convolution that also stores the prefix sums at the faulty rows), and codes kept "
    "as 8-bit values between layers (a quarter of the requantization's and residual adds' memory traffic). "
    "LeNet-5's layers are small and its cost is per call: each faulty layer's replay plan lookup, replay and "
    "requantization are separate steps of tens of microseconds. A campaign's chips replay different numbers of "
    "columns, so its kernel choices (kept in memory only by the benchmark) are still being measured and "
    "confirmed through much of a 200-chip LeNet-5 campaign; processes that keep choices on disk start with "
    "them. The process's threading settings are this machine's measured ones (`sysarray kernels "
    "--measure-layer`: numba's OpenMP layer with libgomp's own spin).")
AVX2_INFERENCE_MISSES = (
    "Where inference misses on this AMD EPYC (AVX2 without VNNI; `torch._int_mm` runs 13-20 times slower than "
    "the float32 GEMM here, so every product is a float32 GEMM or convolution exact by bound): ResNet-20 runs "
    "faster than float32 fault-free, and with 1% psum-faulty PEs a run of about 275-285 ms spends about 135-140 "
    "ms in the convolutions (as the fault-free run does), 65-75 ms replaying the faulty columns' outputs, about "
    "46 ms requantizing with the replayed outputs applied (the fault-free run's requantizations take about 20 ms) "
    "and 10 ms in residual adds (timers around each step, medians of 8 runs on two chips, float32 taking "
    "205-210 ms in the same processes). The replay kernel (float32 "
    "fused multiply-adds of 8 lanes over runs of the input's phase planes, four vectors of a run per tap) "
    "computes about 28e9 lane multiply-adds per second on the two cores, where a loop of fused multiply-adds on "
    "registers alone reaches about 50e9 on one core and 80-95e9 on both; on layers whose replayed outputs pair "
    "up by array column (the same taps, each input vector loaded once for two outputs) it reaches 40-43e9. The "
    "corrected requantization costs about twice the plain one (0.71 against 0.40 ns per value on one core "
    "with the data in cache, 2.3 times within a run): each tile's sums are copied into a buffer where the "
    "replayed channels are corrected before the vectorised pass reads it. LeNet-5's ratios move between runs "
    "here (1.02-1.18 against the tuned float32, 0.91-1.39 against torch's defaults); its calls take about 10 "
    "ms. What would close ResNet-20's gap: more multiply-adds per input load in the replay (more outputs served "
    "by each load than the two of one array column), the replay sharing the convolution's pass over the input, "
    "and codes kept as 8-bit values between layers. Against float32 under torch's own defaults (403 ms in "
    "the last run, against 257 ms in the tuned process, whose freed activations stay in it instead of "
    "page-faulting back) ResNet-20 meets the target. The threading settings are this machine's measured ones "
    "(numba's OpenMP layer with libgomp's own spin).")
AVX2_CAMPAIGN_MISSES = (
    "Where campaigns miss on this AMD EPYC: a chip costs about what its faulty inference costs (the campaign's "
    "own overhead is 2-4%), and a faulty run costs more than a fault-free one for the reasons the inference "
    "section gives for this machine: ResNet-20's replay and corrected requantization of the faulty columns' "
    "outputs, LeNet-5's per-call steps of tens of microseconds for each faulty layer (plan lookup, replay, "
    "requantization) on layers whose whole GEMM takes about as long.")
FAT_MISSES = (
    "ResNet-20's stuck-at FAT epoch meets the target: its time is in the convolutions, forward and backward, "
    "which the twin runs as torch does (float32 wherever the weight codes' L1 norms keep every sum exact); its "
    "requantizations and residual adds are one numba pass each way, and the chip's corrections add about a "
    "fifth. LeNet-5 misses (batch 64, one torch and one numba thread for both epochs): its layers are small, so "
    "the cost is per call. On Fashion-MNIST a step costs about 13 ms against 7.8 ms in float32. The twin "
    "without the chip costs about 1.25x float32: its requantizations take about 1.5 ms forward and backward "
    "where float32's ReLUs take 0.25 (one integer pass forward, one masked pass backward, and the torch calls "
    "around them, which dominate on the small layers); its codes, all layers in one autograd step, about 0.3 "
    "ms; its 2x2 max pools are numba kernels, several times faster than torch's on one thread, which float32 "
    "uses. The chip's corrections add about 2.6 ms per step, of which the replay kernels take about 0.55 ms: "
    "the rest is per layer and step, on the new weights (latched weights in GEMM form, the replay plan, the "
    "input's layout, 50-70 us of calls between the hook and the replay) and, on the first convolution, 0.12 "
    "ms to copy its sums to int32 and write the fix into them. On digits (8x8 images) a float32 step is about "
    "2.7 ms of mostly fixed per-call cost, so the twin's and the chip's calls per layer weigh more. What would "
    "close it: the replayed outputs applied inside the requantization's pass (as inference does for "
    "channels-last layers), the replay's tables kept across steps with only their weight values refreshed "
    "(their structure depends on the fault map), and the twin's requantizations of all small layers in one "
    "call.")
AVX2_FAT_MISSES = (
    "On this AMD EPYC, ResNet-20's and Fashion-MNIST LeNet-5's stuck-at FAT epochs meet the target and LeNet-5 on "
    "digits misses. Its 8x8 images make a float32 step (batch 64, one thread) about 2.8 ms, most of it the fixed "
    "cost of each call, and the stuck-at step about 6.2 ms (the optimizer's step, the same in both, about 0.35 "
    "ms). Timed apart: the twin's forward pass without the chip "
    "takes 1.75 ms against float32's 0.69 ms (its four requantizations about 0.55 ms, the codes of all layers "
    "0.22 ms, its two convolutions the same 0.38 ms as float32's); the chip's hook adds about 1.1-1.7 ms "
    "(265-325 us for each convolution and 175-200 us for each linear layer timed alone, more within a step; the "
    "replay kernels are about a third of a convolution's and less of a linear layer's: the rest is per call, on "
    "the step's new weights); the twin's backward pass takes about 2.4 ms against float32's 1.4 ms. Without the "
    "chip the twin's step is already about 1.6 times float32's, so closing the gap takes fewer calls per layer "
    "on both sides: the replayed outputs applied inside the requantization's pass (as inference does for "
    "channels-last layers), the replay's tables kept across steps with only their weight values refreshed "
    "(their structure depends on the fault map), and the twin's requantizations of all small layers in one "
    "call.")
MODELS_MISSES = (
    "Where DeiT misses (and the vision transformers and ConvNeXt come close): their ratios move from run to run "
    "with the float32 baseline, the noisier side, which runs under this machine's measured threading settings "
    "(libgomp's own spin; the short spin of the unmeasured constants slowed it: DeiT's float32 took 4.7-5.2 ms "
    "with the default spin against 7.9-9.7 ms with the short one, in alternating processes). At batch 8 every "
    "layer is small. On one thread a DeiT run costs about 2.9 ms of fixed per-op work (about 100 ops: Python "
    "dispatch, checks and memo lookups around kernels of tens of microseconds) plus 0.93 ms per image "
    "fault-free, 5.9 ms plus 1.7 ms per image with 1% psum-faulty PEs, where float32 costs 0.66 ms plus 0.44 ms "
    "per image. The kernels run two to three times slower inside a run than alone, their operands cold in the "
    "caches after the other layers, and a fault-free linear layer's requantization (about 40 us for 528x192 "
    "outputs) costs more than its GEMM. What would close it: a compiled executor for the integer program (one "
    "dispatch per run instead of one per op), codes kept as 8-bit values between ops (a quarter of the memory "
    "traffic) and attention (both products and the softmax) as one kernel per batch of heads.")


BENCHMARKS = (
    Bench("bench_engines", "Engines",
          "The cycle engine's clock rate in PE-register updates per second (cycles x rows x columns / seconds) on "
          "conv-sized GEMMs, against a naive single-threaded numba clock loop; ResNet-18 clocked layer by layer with "
          "its values on a 32x32 WS array (SCALE-Sim v2 needs over 5 minutes for the timing alone); and the fast "
          "engine's cost over `torch._int_mm` and over the exact float32 GEMM, fault-free and with 1% faulty PEs, "
          "for each dataflow; its target is against the faster of the two on the machine at hand. Times are "
          "medians of round-robin repeats after a warm-up call and untimed rounds until "
          "the kernel choices are final; every result is checked against an exact GEMM or the other engine.",
          engines_rows, {"": ENGINES_MISSES}),
    Bench("bench_inference", "Inference",
          "Integer inference of LeNet-5 and ResNet-20 (32x32 inputs, untrained weights) on a 32x32 WS chip with the "
          "fast engine, fault-free and on several chips with 1% psum-faulty PEs, over float32 torch inference of the "
          "same model and batch. Float32 is timed in the benchmark's tuned process and again in a child process under "
          "torch's own runtime defaults; the target holds only if both ratios meet it. The faulty chips are also timed in "
          "two child processes that differ only in whether they call `sysarray.runtime.configure()` first: what "
          "the process tuning is worth on this machine (below 1x: the untuned process is faster).", inference_rows,
          {"": INFERENCE_MISSES, "amd-epyc-avx2": AVX2_INFERENCE_MISSES}),
    Bench("bench_models", "Architectures",
          "Compact re-implementations of today's CNN and vision-transformer families (`accel_models.zoo.families`, "
          "random weights, BatchNorm statistics settled on the images) at batch 8 on 3x64x64 inputs: the lowering's time (capture, calibration, integer program) "
          "and integer inference on a 32x32 WS chip with the fast engine, fault-free and with 1% psum-faulty PEs, over "
          "float32 torch inference of the same model and batch (the faster of torch's threads and one thread, measured "
          "in the same run); and the zoo's MobileNet-v2, MobileNet-v3 and ViT trained "
          "here, their fault-free chip accuracy against float32.", models_rows, {"": MODELS_MISSES}),
    Bench("bench_campaign", "Fault campaigns",
          "Fault campaigns on a 16x16 WS chip with 1% psum-faulty PEs: LeNet-5 on the digits test split and ResNet-20 "
          "on random 32x32 images. Chips per minute with 1 and 2 worker processes, the cost of one chip over one "
          "fault-free inference (1 worker, end to end) and the 2-worker parallel efficiency, each the median over "
          "alternating pairs of campaigns.", campaign_rows,
          {"": INFERENCE_MISSES, "amd-epyc-avx2": AVX2_CAMPAIGN_MISSES}),
    Bench("bench_clipping", "Activation clipping",
          "Accuracy under faults of LeNet-5 (and VGG-11 on Fashion-MNIST where present) with no clipping, Ranger, "
          "FT-ClipAct, FitAct and ProAct: on faulty chips and under weight-memory bit flips (int8, and float32 as the "
          "clipping papers inject), mean and worst over seeded chips per rate; threshold counts and search times "
          "(docs/clipping.md).", clipping_rows),
    Bench("bench_fat", "Fault-aware training",
          "The retraining cost of conventional FAT, per-chip FAT and eFAT for populations of chips with uniformly "
          "placed and clustered faulty PEs (LeNet-5, 16x16 WS, bypass mode), and the cost of one FAP+T or stuck-at "
          "FAT epoch over one float32 training epoch, for LeNet-5 and for ResNet-20 (docs/fat.md).", fat_rows,
          {"": FAT_MISSES, "amd-epyc-avx2": AVX2_FAT_MISSES}),
    Bench("bench_gpu", "GPU",
          "The fast engine on a CUDA GPU: integer inference of LeNet-5 and ResNet-20 (batch 256, 32x32 WS, fault-free "
          "and with 1% psum-faulty PEs) over float32 torch inference on the same GPU, every chip's logits checked "
          "against the CPU engine's; a LeNet-5 campaign on the GPU, its results checked byte-identical to the CPU's; "
          "one stuck-at FAT epoch over one float32 epoch, both on the GPU; and how many of the shape classes "
          "of the exact products the int8 tensor cores won against float64.", gpu_rows,
          absent="no GPU has been available where the benchmarks ran. The CUDA paths (`device=`, `--device cuda`) "
                 "are tested by the CUDA tests, which run where a GPU is present; run "
                 "`.venv/bin/python benchmarks/bench_gpu.py` on a GPU machine to fill this section"),
    Bench("bench_cli", "Command-line start-up",
          "Wall time of `sysarray --help` and of every `sysarray COMMAND --help`, each in a fresh process started "
          "as a user starts it (the console script): Python's start, the parser modules' imports, the parser and "
          "the help text. The median of round-robin repeats after one untimed round (docs/cli.md).", cli_rows),
)


# --------------------------------------------------------------------------- page
def _table(rows: Sequence[Row]) -> list[str]:
    out = ["| metric | value | target | met |", "|---|---:|---|---|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return out


def _machine(d: dict, name: str) -> list[str]:
    m = d.get("machine") or {}
    cores = m.get("usable_cores") or m.get("logical_cores")
    commit = m.get("git_commit")
    at = f" at commit {commit[:12]}{' (uncommitted changes)' if m.get('git_dirty') else ''}" if commit else ""
    lanes = f"; engine SIMD lanes: {m['engine_simd_lanes']}" if "engine_simd_lanes" in m else ""
    gpu = d.get("gpu")
    card = ([f"- GPU: {gpu.get('name')}, compute capability {gpu.get('capability', '?')}, "
             f"{number(gpu.get('memory_gib'))} GiB; CUDA {gpu.get('cuda', '?')}, cuDNN {gpu.get('cudnn', '?')}"]
            if gpu else [])
    command = d.get("command")
    command_text = f"`{command}`" if command else f"not recorded (the default is `.venv/bin/python benchmarks/{name}.py`)"
    return [
        f"- Machine: {m.get('cpu_model', 'unknown')} (family/model {m.get('cpu_family_model', '?')}), "
        f"{cores} cores, {number(m.get('mem_total_gib'))} GiB; ISA: {', '.join(m.get('simd', [])) or 'not recorded'}{lanes}",
        f"- Run: {m.get('date', 'unknown date')}, {d.get('mode', 'full')} mode; Python {m.get('python', '?')}, "
        f"torch {m.get('torch', '?')}, numba {m.get('numba', '?')}, numpy {m.get('numpy', '?')}, "
        f"sysarray {m.get('sysarray', '?')}{at}; threads: torch {m.get('torch_threads', '?')}, "
        f"numba {m.get('numba_threads', '?')} ({m.get('numba_threading_layer', '?')} layer)",
        *card,
        f"- `sysarray.runtime.configure()`: {describe_tuning(d.get('tuning'))}",
        f"- Command: {command_text}",
    ]


def _load(path: Path) -> tuple[dict | None, str]:
    """``(data, why)``: the JSON, or None and why it is not there."""
    try:
        return json.loads(path.read_text()), ""
    except FileNotFoundError:
        return None, f"no `{path.name}`"
    except (OSError, ValueError) as e:
        return None, f"`{path.name}` unreadable ({type(e).__name__})"


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO)) + "/"
    except ValueError:
        return str(path) + "/"


def render(results: Path, benchmarks: Iterable[Bench] = BENCHMARKS) -> str:
    """The whole page (Markdown) from the JSON files in ``results``."""
    src = _shown(results)
    default = results.resolve() == DEFAULT_RESULTS.resolve()
    command = f"`{COMMAND}` (or `make perf-doc`)" if default else f"`{COMMAND} --results {src}`"
    lines = [
        "# Performance",
        "",
        f"<!-- Generated by benchmarks/render_performance.py from {src}*.json: do not edit. -->",
        "",
        f"This page is generated from the benchmarks' JSON files in `{src}`; do not edit it by hand. "
        f"Rerun the benchmarks (benchmarks/README.md), then regenerate it with {command}.",
        "",
        "Each section says what a benchmark measures, gives one row per figure (with the project's target and "
        "whether the figure meets it, where there is a target) and the machine and command the figures come from. "
        "Ratios are between measurements taken in the same run.",
        "",
    ]
    others = (sorted(p for p in results.iterdir() if p.is_dir() and any(p.glob("bench_*.json")))
              if results.is_dir() else [])
    if others:
        lines += ["Figures from more than one machine: those in `" + src + "` first, then each other machine's "
                  "(a subfolder of it), under a heading that names the CPU and its int8 instructions.", ""]
    for b in benchmarks:
        lines += [f"## {b.title} (`benchmarks/{b.name}.py`)", "", b.measures, ""]
        data, why = _load(results / f"{b.name}.json")
        if data is None:
            missing = not (results / f"{b.name}.json").exists()
            lines += [f"Not measured: {b.absent if b.absent and missing else why + ' in `' + src + '`'}.", ""]
        else:
            lines += _section(b, data, "", bool(others))
        for folder in others:
            data, _ = _load(folder / f"{b.name}.json")
            if data is not None:
                lines += _section(b, data, folder.name, True)
    return "\n".join(lines)


def _section(b: Bench, data: dict, folder: str, heading: bool) -> list[str]:
    """One machine's figures of benchmark ``b``; ``folder`` the results subfolder ("" the main one)."""
    lines = []
    if heading:
        m = data.get("machine") or {}
        lines += [f"### {m.get('cpu_model', 'unknown CPU')}, {int8_instructions(m.get('simd', []))}"
                  f"{f' (`{folder}/`)' if folder else ''}", ""]
    if data.get("mode") == "quick":
        lines += ["Smoke run (`--quick`): smaller problems and fewer repeats; the figures only show that the "
                  "benchmark runs.", ""]
    rows = b.rows(data)
    lines += _table(rows) + [""]
    misses = b.misses.get(folder, "")
    if misses and any(r[3] == "**no**" for r in rows):
        lines += [misses, ""]
    return lines + _machine(data, b.name) + [""]


def int8_instructions(simd: Sequence[str]) -> str:
    """The fastest int8 dot-product instructions in a machine's ISA flags, in words."""
    have = set(simd)
    names = [name for flag, name in (("amx_int8", "AMX"), ("avx512_vnni", "AVX-512 VNNI"), ("avx_vnni", "AVX-VNNI"))
             if flag in have]
    if names:
        return " + ".join(names)
    return "AVX2, no VNNI" if "avx2" in have else "no AVX2"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS,
                   help="folder of the benchmarks' JSON files (default benchmarks/results)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="page to write (default docs/performance.md)")
    args = p.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(args.results))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
