"""The process-pool runner's fork server (mitigation/campaign/pool.py, mitigation/campaign/server_entry.py)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mitigation.campaign import pool


def test_the_fork_server_preloads_its_entry_point_first():
    assert pool.PRELOAD[0] == "mitigation.campaign.server_entry"
    assert "mitigation.campaign.pool" in pool.PRELOAD


def test_library_imports_never_load_the_server_entry_point():
    code = ("import os, sys; before = dict(os.environ); import mitigation.campaign, mitigation.commands, "
            "mitigation.efat, mitigation.importance, mitigation.sweep, mitigation.report; "
            "assert 'mitigation.campaign.server_entry' not in sys.modules; "
            "assert all(os.environ.get(k) == before.get(k) for k in "
            "('NUMBA_NUM_THREADS', 'OMP_NUM_THREADS', 'MKL_NUM_THREADS')); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[3])
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_pool_workers_keep_the_fork_servers_objects_and_their_own_state_out_of_full_collections():
    """The fork server freezes what it holds before it forks, and a worker freezes the state it
    unpickles: a worker's full collections then walk neither (gc.freeze, permanent generation)."""
    import gc
    from concurrent.futures import ProcessPoolExecutor

    from mitigation.campaign.spawn import worker_blob

    ctx = pool._mp_context()
    with ProcessPoolExecutor(1, mp_context=ctx) as plain:
        server = plain.submit(gc.get_freeze_count).result()
    state = [[i] for i in range(1000)]  # a thousand objects the collector tracks
    with ProcessPoolExecutor(1, mp_context=ctx, initializer=pool._init_worker, initargs=(worker_blob(state),)) as ex:
        worker = ex.submit(gc.get_freeze_count).result()
    if ctx.get_start_method() == "forkserver":
        assert server > 10_000  # torch's and numba's objects, and the warm-up's
    assert worker >= server + 1000
