"""docs/performance.md is rendered from the benchmarks' JSON files: small synthetic ones here, with
the structure the benchmark scripts write."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import render_performance as rp

MACHINE = {"cpu_model": "Test CPU 9000", "cpu_family_model": "6/143", "usable_cores": 4, "logical_cores": 8,
           "mem_total_gib": 15.5, "simd": ["avx2", "avx512f", "avx512_vnni", "amx_int8"],
           "date": "2030-01-02T03:04:05+00:00", "python": "3.11.9", "torch": "9.9.0+cpu", "torch_threads": 4,
           "numba": "0.99.0", "numba_threads": 4, "numba_threading_layer": "workqueue", "numpy": "3.0.0",
           "sysarray": "0.1.0", "git_commit": "0123456789abcdef0123", "git_dirty": False}
TUNING = {"omp_spin": "set", "numba_layer": "workqueue", "malloc": True, "threads": None}


def _run(name: str, **extra) -> dict:
    return {"benchmark": name, "mode": "full", "command": f".venv/bin/python benchmarks/{name}.py",
            "tuning": TUNING, "machine": MACHINE, **extra}


def _engines() -> dict:
    cycle = {"array": "128x128", "M": 3136, "K": 576, "N": 256, "target_updates_per_s": 2e9,
             "updates_per_s": {"engine_fault_free": 3.03e9, "engine_faulty": 1.5e9,
                               "engine_fault_free_1thread": 1.86e9, "naive_fault_free": 7.6e8},
             "speedup_vs_naive": {"fault_free": 3.95, "faulty": 3.8, "fault_free_1thread": 2.4}}
    fast = {"M": 12544, "K": 576, "N": 64, "dataflow": "ws",
            "seconds": {"a": 0.01397, "b": 0.001, "c": 0.00106, "d": 0.00292, "e": 0.00346},
            "ratios": {"d/a": 0.209, "d/b": 2.92, "c/a": 0.0755, "c/b": 1.06, "e/b": 3.46}}
    resnet = {"image": 224, "variants": {"fault_free": {"total_s": 1.8, "total_cycles": 2855052},
                                         "faulty_1pct_psum_act": {"total_s": 1.84, "total_cycles": 2855052}}}
    return _run("bench_engines", cycle=[cycle], resnet18=resnet, fast=[fast],
                dataflows=[{**fast, "dataflow": "is", "ratios": {**fast["ratios"], "d/b": 13.2}}],
                jit={"fresh_cache": True, "calls": [{"first_call_s": 7.84}, {"first_call_s": 0.2}]}, verified=True)


def _inference() -> dict:
    def model(name, ratio, worst):
        return {"model": name, "batch": 256, "maps": [{}, {}, {}], "timings": {"float32": {"median_s": 0.0082}},
                "fault_free_over_float": 1.19, "faulty_over_float": ratio, "faulty_over_float_worst_map": worst,
                "faulty_over_float_torch_defaults": 1.61, "faulty_over_float_torch_defaults_worst_map": 1.7}
    return _run("bench_inference", results=[model("lenet5", 1.77, 1.97), model("resnet20", 2.34, 2.6)], target=2.0)


def _campaign() -> dict:
    res = {"workload": "lenet5", "chips": 200, "chips_per_min_1_worker": 13873.1, "chips_per_min_2_workers": 23218.8,
           "cost_per_chip_over_fault_free": 1.42, "faulty_over_fault_free": 1.35, "parallel_efficiency": 0.826,
           "parallel_efficiency_steady": 0.882}
    return _run("bench_campaign", results=[res], fork_server_start_s=8.28,
                targets={"cost_per_chip_over_fault_free": 1.5, "parallel_efficiency": 0.85})


def _clipping() -> dict:
    curve = {"rates": [0.005, 0.05], "none": {"mean": [97.5, 41.25], "worst": [96.0, 12.5]},
             "ranger": {"mean": [98.0, 90.5], "worst": [97.0, 88.0]}}
    res = {"clean": {"none": 98.33, "ranger": 98.1}, "chip_os": curve,
           "methods": {"ranger": {"thresholds": 4, "overhead": 0.00012, "seconds": 0.4, "model_parameters": 61706}}}
    return _run("bench_clipping", results={"LeNet-5/digits": res}, mode="quick")


def _fat() -> dict:
    cost = {"conventional_epochs": 400, "per_chip_epochs": 123, "efat_planned_epochs": 37, "efat_epochs": 41,
            "groups": 9, "map_epochs": 33, "rejected": [3], "violations": [], "chip_rates": [0.1] * 50}
    return _run("bench_fat", results=[{"dataset": "digits", "populations": {"uniform": cost},
                                       "epoch_cost": {"fapt_over_float": 0.93, "stuckat_over_float": 5.17}}])


def _gpu() -> dict:
    def model(name, ratio):
        return {"model": name, "batch": 256, "timings": {"float32": {"median_s": 0.0021}},
                "fault_free_over_float": 1.4, "faulty_over_float": ratio, "faulty_over_float_worst_map": ratio + 0.3,
                "exact_against_cpu": True}
    gpu = {"name": "Test GPU 100", "capability": "9.0", "memory_gib": 79.2, "cuda": "12.8", "cudnn": 91000}
    return _run("bench_gpu", gpu=gpu, results=[model("lenet5", 3.1), model("resnet20", 1.8)], target=2.0,
                campaign={"workload": "lenet5", "chips": 32, "cost_per_chip_over_fault_free": 1.1,
                          "identical_to_cpu": True},
                fat={"dataset": "digits", "stuckat_over_float": 2.5, "twin_exact": True},
                product_kernels={"conv.product": {"[1]": "int8", "[2]": "float", "[3]": "int8"}})


ALL = {"bench_engines": _engines, "bench_inference": _inference, "bench_campaign": _campaign,
       "bench_clipping": _clipping, "bench_fat": _fat, "bench_gpu": _gpu}


def _write(folder: Path, names) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / f"{name}.json").write_text(json.dumps(ALL[name]()))
    return folder


def _section(page: str, script: str) -> str:
    """The page's section of one benchmark, up to the next heading."""
    start = page.index(f"(`benchmarks/{script}.py`)")
    end = page.find("\n## ", start)
    return page[start:end if end >= 0 else None]


def _rows(section: str) -> dict[str, list[str]]:
    """Metric -> [value, target, met] of a section's table."""
    out = {}
    for line in section.splitlines():
        if line.startswith("| ") and not line.startswith("| metric"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            out[cells[0]] = cells[1:]
    return out


@pytest.fixture
def page(tmp_path) -> str:
    return rp.render(_write(tmp_path / "results", ALL))


def test_page_says_it_is_generated_and_how(page, tmp_path):
    head = page.split("\n## ")[0]
    assert "do not edit" in head
    assert f"`{rp.COMMAND} --results {tmp_path / 'results'}/`" in head
    default = rp.render(rp.DEFAULT_RESULTS).split("\n## ")[0]
    assert f"`{rp.COMMAND}` (or `make perf-doc`)" in default


def test_engines_table_has_the_figures_and_targets(page):
    rows = _rows(_section(page, "bench_engines"))
    ff = rows["Cycle engine, WS 128x128, GEMM 3136x576x256, fault-free: PE-register updates/s"]
    assert ff == ["3.03e9", ">= 2e9", "yes"]
    assert rows["Cycle engine, WS 128x128, GEMM 3136x576x256, 1% faulty PEs (psum, act): PE-register updates/s"] == \
        ["1.5e9", ">= 2e9", "**no**"]
    # the target is against the faster exact GEMM of the machine: here the float32 one
    assert rows["Fast engine, WS 32x32, GEMM 12544x576x64, 1% psum-faulty PEs / this machine's fastest exact GEMM "
                "(exact float32 GEMM)"] == ["2.92x", "<= 3x", "yes"]
    assert rows["Fast engine, WS 32x32, GEMM 12544x576x64, 1% psum-faulty PEs / `torch._int_mm`"] == ["0.209x", "", ""]
    assert rows["Fast engine, WS 32x32, GEMM 12544x576x64, 1% psum-faulty PEs / exact float32 GEMM"][0] == "2.92x"
    assert rows["Fast engine by dataflow, IS 32x32, GEMM 12544x576x64, 1% psum-faulty PEs / exact float32 GEMM"][0] \
        == "13.2x"
    assert rows["ResNet-18: cycles"][0] == "2855052"
    assert rows["Slowest first call of an engine (compile, fresh numba cache)"][0] == "7.84 s"
    assert rows["Every result verified bit for bit"][0] == "yes"


def test_inference_and_campaign_targets(page):
    inf = _rows(_section(page, "bench_inference"))
    assert inf["LeNet-5, batch 256: integer, 1% psum-faulty PEs / float32 (median over 3 chips)"] == \
        ["1.77x", "<= 2x", "yes"]
    assert inf["ResNet-20, batch 256: integer, 1% psum-faulty PEs / float32 (median over 3 chips)"] == \
        ["2.34x", "<= 2x", "**no**"]
    assert inf["LeNet-5, batch 256: float32 torch inference, ms"][0] == "8.20 ms"
    camp = _rows(_section(page, "bench_campaign"))
    assert camp["LeNet-5, 200 chips: cost per chip / one fault-free inference"] == ["1.42x", "<= 1.5x", "yes"]
    assert camp["LeNet-5, 200 chips: 2-worker parallel efficiency"] == ["0.826", ">= 0.85", "**no**"]
    assert camp["LeNet-5, 200 chips: chips per minute, 2 workers"][0] == "23219"


def test_clipping_and_fat_tables(page):
    clip = _section(page, "bench_clipping")
    assert "Smoke run (`--quick`)" in clip
    rows = _rows(clip)
    assert rows["LeNet-5/digits, none: fault-free accuracy on the chip, %"][0] == "98.3"
    curve = rows["LeNet-5/digits, (a) OS chip, psum bits 24-30 stuck at 1, PE rate 0.005 / 0.05, none: "
                 "accuracy %, mean (worst chip)"]
    assert curve[0] == "97.5 (96.0) / 41.2 (12.5)"
    fat = _rows(_section(page, "bench_fat"))
    assert fat["digits, 50 chips, uniform faults: retraining epochs, eFAT planned / with repairs"][0] == "37 / 41"
    assert fat["digits, 50 chips, uniform faults: rejected chips / accuracy violations"][0] == "1 / 0"
    assert fat["digits: one stuck-at FAT epoch / one float32 epoch"][0] == "5.17x"


def test_gpu_table_names_the_card_and_its_target(page, tmp_path):
    section = _section(page, "bench_gpu")
    rows = _rows(section)
    assert rows["ResNet-20, batch 256: integer, 1% psum-faulty PEs / float32 (median over chips)"] == \
        ["1.80x", "<= 2x", "yes"]
    assert rows["LeNet-5, batch 256: integer, 1% psum-faulty PEs / float32 (median over chips)"] == ["3.10x", "", ""]
    assert rows["ResNet-20, batch 256: every chip's logits equal to the CPU engine's"][0] == "yes"
    assert rows["LeNet-5 campaign, 32 chips: results.csv identical to the CPU's"][0] == "yes"
    assert rows["digits: one stuck-at FAT epoch / one float32 epoch"][0] == "2.50x"
    assert rows["Exact products (`conv.product`): shape classes won by the int8 tensor cores / measured"][0] == "2 / 3"
    assert "GPU: Test GPU 100, compute capability 9.0, 79.2 GiB; CUDA 12.8" in section
    # without its JSON the section says why and how to fill it
    missing = _section(rp.render(_write(tmp_path / "no-gpu", ["bench_engines"])), "bench_gpu")
    assert "Not measured: no GPU has been available" in missing and "benchmarks/bench_gpu.py` on a GPU" in missing


def test_every_section_names_its_machine_and_command(page):
    for name in ALL:
        section = _section(page, name)
        assert "Test CPU 9000" in section and "avx512_vnni" in section and "amx_int8" in section
        assert "4 cores" in section and "2030-01-02" in section
        assert "torch 9.9.0+cpu" in section and "numba 0.99.0" in section and "numpy 3.0.0" in section
        assert "omp_spin=set, numba_layer=workqueue, malloc=True" in section
        assert f"`.venv/bin/python benchmarks/{name}.py`" in section


def test_missing_or_unreadable_json_is_not_measured(tmp_path):
    results = _write(tmp_path / "results", ["bench_engines"])
    (results / "bench_fat.json").write_text("{not json")
    page = rp.render(results)
    assert "3.03e9" in _section(page, "bench_engines")
    for name in ("bench_inference", "bench_campaign", "bench_clipping", "bench_fat"):
        assert "Not measured" in _section(page, name)
    assert "unreadable" in _section(page, "bench_fat")
    nowhere = rp.render(tmp_path / "no-such-folder")  # a folder not made yet: every section not measured
    assert all("Not measured" in _section(nowhere, name) for name in ALL)


def test_older_json_without_command_or_tuning(tmp_path):
    data = _engines()
    del data["command"], data["tuning"]
    (tmp_path / "bench_engines.json").write_text(json.dumps(data))
    section = _section(rp.render(tmp_path), "bench_engines")
    assert "configure()`: not recorded" in section and "Command: not recorded" in section


def test_main_writes_the_page(tmp_path):
    results = _write(tmp_path / "results", ALL)
    out = tmp_path / "docs" / "performance.md"
    assert rp.main(["--results", str(results), "--out", str(out)]) == 0
    assert out.read_text() == rp.render(results)


def test_other_machines_render_under_their_own_heading_with_their_own_misses(tmp_path, monkeypatch):
    results = _write(tmp_path / "results", ["bench_engines"])
    other = _engines()
    other["machine"] = {**MACHINE, "cpu_model": "Other CPU 7", "simd": ["avx", "avx2", "fma"]}
    other["fast"][0]["seconds"] = {**other["fast"][0]["seconds"], "a": 0.0007}  # int8 GEMM fastest there
    _write(results / "other-avx2", [])
    (results / "other-avx2" / "bench_engines.json").write_text(json.dumps(other))
    bench = next(b for b in rp.BENCHMARKS if b.name == "bench_engines")
    monkeypatch.setattr(rp, "BENCHMARKS", (type(bench)(**{**bench.__dict__,
                                                          "misses": {"other-avx2": "WHY IT MISSES THERE"}}),))
    section = _section(rp.render(results, rp.BENCHMARKS), "bench_engines")
    main, rest = section.split("### Other CPU 7, AVX2, no VNNI (`other-avx2/`)")
    assert "### Test CPU 9000, AMX + AVX-512 VNNI" in main and "Other CPU 7" not in main
    assert "WHY IT MISSES THERE" not in main  # the main machine's table has its own (empty) explanation
    assert "Other CPU 7" in rest and "Test CPU 9000" not in rest
    rows = _rows(rest)
    assert rows["Fast engine, WS 32x32, GEMM 12544x576x64, 1% psum-faulty PEs / this machine's fastest exact GEMM "
                "(`torch._int_mm`)"] == ["4.17x", "<= 3x", "**no**"]
    assert "WHY IT MISSES THERE" in rest
