"""Campaigns on LeNet-5 / digits / 16x16 WS (mitigation/campaign/run.py): determinism across workers
and schedulers, resume, the population's seeds, and the expected fault-sensitivity orderings."""
from __future__ import annotations

import csv
import os

import numpy as np
import pytest

import sysarray as sa
from mitigation.campaign import CheckpointTask, FaultFiles, FaultGroup, RateGrid, run_campaign
from mitigation.campaign.store import JOURNAL, RESULTS, read_journal
from sysarray import faultgen

CFG = sa.ArrayConfig(16, 16, "ws")
LIMIT = 64


def small_grid(seed: int = 0) -> RateGrid:
    return RateGrid([0.0, 0.01, 0.04], 2, seed, [FaultGroup.parse("psum:20-31:1"), FaultGroup.parse("weight:0-7")])


def read_rows(path: str) -> list[dict]:
    with open(os.path.join(path, RESULTS)) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, lenet_ckpt):
    """A 12-chip campaign run in this process: the results every other run must reproduce."""
    out = str(tmp_path_factory.mktemp("ref") / "camp")
    run = run_campaign(CheckpointTask(lenet_ckpt, limit=LIMIT), small_grid(), out, CFG, workers=1)
    assert run.evaluated == 12
    with open(os.path.join(out, RESULTS), "rb") as f:
        return out, f.read()


def test_results_have_one_sorted_row_per_chip_and_no_wall_time(reference):
    out, data = reference
    rows = read_rows(out)
    assert [int(r["chip"]) for r in rows] == list(range(12))
    assert "seconds" not in rows[0] and "wall" not in ",".join(rows[0])
    assert {r["group"] for r in rows} == {"psum:20-31:1", "weight:0-7:random"}
    for r in rows:
        acc, drop = float(r["accuracy"]), float(r["drop"])
        assert 0 <= acc <= 1 and 0 <= float(r["sdc_rate"]) <= 1
        assert int(r["critical"]) == int(drop > 0.05)
        if float(r["rate"]) == 0:
            assert (r["faulty_pes"], r["stuck_bits"], r["registers"], drop) == ("0", "0", "none", 0.0)
        else:
            assert int(r["faulty_pes"]) == round(float(r["rate"]) * 256)
    with open(os.path.join(out, "timings.csv")) as f:
        timings = list(csv.DictReader(f))
    assert [int(t["chip"]) for t in timings] == list(range(12)) and all(float(t["seconds"]) > 0 for t in timings)


def test_same_campaign_twice_and_with_two_workers_is_byte_identical(reference, tmp_path, lenet_ckpt, monkeypatch):
    from mitigation.campaign import pool

    _, ref = reference
    task = CheckpointTask(lenet_ckpt, limit=LIMIT)
    run_campaign(task, small_grid(), str(tmp_path / "again"), CFG, workers=1)
    run_campaign(task, small_grid(), str(tmp_path / "pool"), CFG, workers=2)
    run_campaign(task, small_grid(), str(tmp_path / "chunks"), CFG, workers=2, chunk_size=5)
    run_campaign(task, small_grid(), str(tmp_path / "three"), CFG, workers=3, chunk_size=1)
    monkeypatch.setattr(pool, "LONG_TASK_S", 0.0)  # long tasks: no task queued ahead in a worker
    run_campaign(task, small_grid(), str(tmp_path / "long"), CFG, workers=2, chunk_size=2)
    for name in ("again", "pool", "chunks", "three", "long"):
        assert (tmp_path / name / RESULTS).read_bytes() == ref
    assert (tmp_path / "again" / "aggregates.csv").read_bytes() == (tmp_path / "pool" / "aggregates.csv").read_bytes()


class FailingGrid(RateGrid):
    """``small_grid`` whose chip ``fail_on`` cannot be drawn (in whichever process evaluates it)."""

    def __init__(self, fail_on: int) -> None:
        g = small_grid()
        super().__init__(g.rates, g.chips_per_rate, g.seed, g.groups)
        self.fail_on = fail_on

    def chip(self, i, cfg):
        if i == self.fail_on:
            raise RuntimeError(f"chip {i} failed")
        return super().chip(i, cfg)


@pytest.mark.parametrize("fail_on", [0, 11])
def test_a_failing_chip_stops_a_pool_campaign_and_a_rerun_completes_it(reference, tmp_path, lenet_ckpt, fail_on):
    # chip 0 fails in this process (it evaluates the first chips while the worker starts), chip 11
    # most likely in the worker or as a task this process takes back at the end
    _, ref = reference
    task, out = CheckpointTask(lenet_ckpt, limit=LIMIT), str(tmp_path / "c")
    with pytest.raises(RuntimeError, match=f"chip {fail_on} failed"):
        run_campaign(task, FailingGrid(fail_on), out, CFG, workers=2, chunk_size=2)
    journal, _ = read_journal(os.path.join(out, JOURNAL))
    assert fail_on not in journal
    again = run_campaign(task, small_grid(), out, CFG, workers=2)
    assert again.evaluated == 12 - len(journal)
    assert (tmp_path / "c" / RESULTS).read_bytes() == ref


def test_dask_local_cluster_gives_the_same_results(reference, tmp_path, lenet_ckpt):
    distributed = pytest.importorskip("distributed")
    _, ref = reference
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        run = run_campaign(CheckpointTask(lenet_ckpt, limit=LIMIT), small_grid(), str(tmp_path / "dask"), CFG,
                           scheduler=cluster.scheduler_address)
    assert run.evaluated == 12
    assert (tmp_path / "dask" / RESULTS).read_bytes() == ref


def test_finished_campaign_does_no_work_and_changed_config_is_refused(reference, lenet_ckpt):
    out, ref = reference
    journal = os.path.join(out, JOURNAL)
    before = (open(journal, "rb").read(), os.stat(os.path.join(out, RESULTS)).st_mtime_ns)
    run = run_campaign(CheckpointTask(lenet_ckpt, limit=LIMIT), small_grid(), out, CFG, workers=2)
    assert (run.evaluated, run.already_done) == (0, 12)
    assert (open(journal, "rb").read(), os.stat(os.path.join(out, RESULTS)).st_mtime_ns) == before
    with pytest.raises(ValueError, match=r"different configuration.*population.seed \(0 -> 1\)"):
        run_campaign(CheckpointTask(lenet_ckpt, limit=LIMIT), small_grid(seed=1), out, CFG, workers=1)
    with pytest.raises(ValueError, match=r"different configuration.*limit"):
        run_campaign(CheckpointTask(lenet_ckpt, limit=LIMIT + 1), small_grid(), out, CFG, workers=1)
    with pytest.raises(ValueError, match=r"different configuration.*bypass"):
        run_campaign(CheckpointTask(lenet_ckpt, limit=LIMIT), small_grid(), out, CFG.replace(bypass=True), workers=1)
    with pytest.raises(ValueError, match="'out' argument of run_campaign must be a folder"):
        run_campaign(CheckpointTask(lenet_ckpt, limit=LIMIT), small_grid(), journal, CFG, workers=1)


def test_resume_after_a_partial_journal_ends_with_the_same_rows(reference, tmp_path, lenet_ckpt):
    out_ref, ref = reference
    out = tmp_path / "resume"
    out.mkdir()
    for name in ("manifest.json",):
        (out / name).write_bytes((open(os.path.join(out_ref, name), "rb")).read())
    lines = open(os.path.join(out_ref, JOURNAL), "rb").read().splitlines(keepends=True)
    # chips 0..4 finished, a sixth record cut in the middle of its write by a kill
    (out / JOURNAL).write_bytes(b"".join(lines[:5]) + lines[5][: len(lines[5]) // 2])
    run = run_campaign(CheckpointTask(lenet_ckpt, limit=LIMIT), small_grid(), str(out), CFG, workers=1)
    assert (run.already_done, run.evaluated) == (5, 7)
    assert (out / RESULTS).read_bytes() == ref
    records, _ = read_journal(str(out / JOURNAL))
    assert sorted(records) == list(range(12))
    assert len((out / JOURNAL).read_bytes().splitlines()) == 12


def test_grid_chips_are_the_faultgen_population_and_files_give_the_same_accuracy(tmp_path, lenet_ckpt):
    grid = RateGrid([0.02], 3, 7, [FaultGroup.parse("psum:16-31:1")])
    pop = faultgen.population(3, CFG, seed=7, pe_rate=0.02, registers=("psum",), bits=list(range(16, 32)), values=(1,))
    for j in range(3):
        fm, desc = grid.chip(j, CFG)
        assert fm == pop[j] and desc["replica"] == j
        # common random numbers: the same replica seed at another rate of the grid
        other = RateGrid([0.02, 0.05], 3, 7, [FaultGroup.parse("psum:16-31:1")]).chip(3 + j, CFG)[0]
        assert other == faultgen.by_pe_rate(CFG, 0.05, seed=np.random.SeedSequence(7).spawn(3)[j],
                                            registers=("psum",), bits=list(range(16, 32)), values=(1,))
    files = tmp_path / "chips"
    files.mkdir()
    for j in range(3):
        grid.chip(j, CFG)[0].save(str(files / f"chip-{j:04d}.npz"), meta=grid.chip_meta(j, CFG))
    task = CheckpointTask(lenet_ckpt, limit=LIMIT)
    run_campaign(task, grid, str(tmp_path / "grid"), CFG, workers=1)
    run_campaign(task, FaultFiles(str(files)), str(tmp_path / "files"), CFG, workers=1)
    a, b = read_rows(str(tmp_path / "grid")), read_rows(str(tmp_path / "files"))
    assert [r["accuracy"] for r in a] == [r["accuracy"] for r in b]
    assert [(r["group"], r["rate"]) for r in a] == [(r["group"], r["rate"]) for r in b]


def test_psum_fault_orderings_on_lenet5_digits(tmp_path, lenet_ckpt):
    """High psum bits: accuracy falls as the rate rises, stuck-at-1 hurts more than stuck-at-0;
    the lowest psum bits barely matter (replicas share PE locations across groups and rates)."""
    groups = [FaultGroup.parse(g) for g in ("psum:24-31:1", "psum:24-31:0", "psum:0-3:random")]
    rates = [0.0, 0.004, 0.02]
    run_campaign(CheckpointTask(lenet_ckpt, limit=100), RateGrid(rates, 4, 0, groups), str(tmp_path / "c"), CFG,
                 workers=1)
    rows = read_rows(str(tmp_path / "c"))
    mean = {(g.label, r): np.mean([float(x["accuracy"]) for x in rows if x["group"] == g.label and float(x["rate"]) == r])
            for g in groups for r in rates}
    for g in ("psum:24-31:1", "psum:24-31:0"):
        assert mean[(g, 0.0)] > mean[(g, 0.004)] > mean[(g, 0.02)], g
    for r in rates[1:]:
        assert mean[("psum:24-31:1", r)] < mean[("psum:24-31:0", r)]
    low = [float(x["drop"]) for x in rows if x["group"] == "psum:0-3:random"]
    assert max(low) <= 0.01
    assert mean[("psum:24-31:1", 0.02)] < 0.5


def test_a_finished_journal_with_stale_results_is_rebuilt_without_work(reference, tmp_path, lenet_ckpt):
    """Killed after the last chip's journal line but before the final results.csv rebuild."""
    out_ref, ref = reference
    out = tmp_path / "stale"
    out.mkdir()
    for name in ("manifest.json", JOURNAL):
        (out / name).write_bytes(open(os.path.join(out_ref, name), "rb").read())
    (out / RESULTS).write_bytes(b"".join(ref.splitlines(keepends=True)[:4]))
    run = run_campaign(CheckpointTask(lenet_ckpt, limit=LIMIT), small_grid(), str(out), CFG, workers=1)
    assert (run.evaluated, run.already_done) == (0, 12)
    assert (out / RESULTS).read_bytes() == ref
    assert (out / "aggregates.csv").read_bytes() == open(os.path.join(out_ref, "aggregates.csv"), "rb").read()


# ------------------------------------------------------------------------------ device
def test_device_cpu_gives_the_default_run(reference, tmp_path, lenet_ckpt):
    _, ref = reference
    run_campaign(CheckpointTask(lenet_ckpt, limit=LIMIT), small_grid(), str(tmp_path / "cpu"), CFG, workers=1,
                 device="cpu")
    assert (tmp_path / "cpu" / RESULTS).read_bytes() == ref


@pytest.mark.parametrize("options, message", [
    ({"workers": 2}, "takes neither worker processes nor a Dask scheduler; leave out workers=2"),
    ({"scheduler": "local"}, "leave out scheduler='local'"),
    ({"engine": "cycle"}, "The cycle engine runs on the CPU; a campaign on cuda needs the fast engine"),
])
def test_a_gpu_campaign_is_one_process_on_the_fast_engine(options, message, tmp_path, lenet_ckpt):
    out = tmp_path / "gpu"
    with pytest.raises(ValueError, match=message):
        run_campaign(CheckpointTask(lenet_ckpt, limit=LIMIT), small_grid(), str(out), CFG, device="cuda", **options)
    assert not out.exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks a machine without CUDA")
def test_a_gpu_campaign_without_cuda_is_a_clear_error(tmp_path, lenet_ckpt):
    with pytest.raises(ValueError, match="'device' argument of run_campaign is 'cuda', but this torch has no CUDA"):
        run_campaign(CheckpointTask(lenet_ckpt, limit=LIMIT), small_grid(), str(tmp_path / "gpu"), CFG, device="cuda")


@pytest.mark.gpu
def test_a_gpu_campaign_gives_the_cpu_results_and_resumes_a_cpu_one(reference, tmp_path, lenet_ckpt):
    out_ref, ref = reference
    task = CheckpointTask(lenet_ckpt, limit=LIMIT)
    run_campaign(task, small_grid(), str(tmp_path / "gpu"), CFG, device="cuda")
    assert (tmp_path / "gpu" / RESULTS).read_bytes() == ref
    # the first five chips done on the CPU, the rest on the GPU
    out = tmp_path / "mixed"
    out.mkdir()
    (out / "manifest.json").write_bytes(open(os.path.join(out_ref, "manifest.json"), "rb").read())
    (out / JOURNAL).write_bytes(b"".join(open(os.path.join(out_ref, JOURNAL), "rb").read().splitlines(True)[:5]))
    run = run_campaign(task, small_grid(), str(out), CFG, device="cuda")
    assert (run.already_done, run.evaluated) == (5, 7)
    assert (out / RESULTS).read_bytes() == ref
