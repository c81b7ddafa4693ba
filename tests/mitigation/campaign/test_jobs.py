"""Jobs and their batching into tasks (mitigation/campaign/jobs.py)."""
from __future__ import annotations

from mitigation.campaign import auto_chunk_size
from mitigation.campaign.jobs import chunks


def test_auto_chunk_size_gives_tasks_of_task_seconds_and_four_per_worker():
    assert auto_chunk_size(0.006, 200, 2) == 6  # LeNet-5 on digits: chips of milliseconds
    assert auto_chunk_size(2.0, 40, 2) == 1  # ResNet-20 on 1,000 images: seconds a chip
    assert auto_chunk_size(0.0001, 40, 2) == 5  # tiny chips, few of them: four tasks per worker
    assert auto_chunk_size(0.0, 3, 8) == 1


def test_chunks_keep_the_order_and_end_with_the_rest():
    jobs = [(i, None) for i in range(7)]
    assert list(chunks(iter(jobs), 3)) == [jobs[:3], jobs[3:6], jobs[6:]]
    assert list(chunks(iter([]), 3)) == []
