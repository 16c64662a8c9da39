"""The order of a parallel ingest (loopline.data.parallel_plan): a file waits only for the previous owner of each
id it repeats, and is judged against exactly the ids earlier files leave in clean/D, transitively."""

from __future__ import annotations

import os
import time

import numpy as np

from loopline.data.parallel import remove_stale_stages, stage_root
from loopline.data.parallel_plan import GatePlan
from loopline.storage.lake import Lake


def ids(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def test_files_wait_only_for_the_previous_owner_of_a_shared_id():
    plan = GatePlan([ids(1, 2), ids(10, 11), ids(2, 3), ids(3, 11)], [False] * 4)
    assert plan.deps == [set(), set(), {0}, {1, 2}]
    assert [plan.ready(k) for k in range(4)] == [True, True, False, False]
    plan.judged(0, ids(), ids(1, 2))
    assert plan.ready(2) and not plan.ready(3)
    assert plan.run_ids(2).tolist() == [2]  # file 0 left id 2 in clean/D


def test_ids_held_earlier_reach_later_files_through_the_chain():
    # id 5 is clean in file 0, a duplicate in file 1 (so not clean there), and must still count for file 2
    plan = GatePlan([ids(5), ids(5, 6), ids(5, 7)], [False] * 3)
    assert plan.deps == [set(), {0}, {1}]
    plan.judged(0, ids(), ids(5))
    plan.judged(1, plan.run_ids(1), ids(6))
    assert plan.run_ids(2).tolist() == [5]


def test_what_was_committed_decides_before_the_commit():
    plan = GatePlan([ids(1, 2), ids(2, 3)], [False, False])
    plan.judged(0, ids(), ids(1, 2))
    plan.judged(1, plan.run_ids(1), ids(3))
    plan.committed(0, ids(), None)  # file 0 put nothing in clean/D after all (e.g. rejected at commit)
    assert (
        plan.run_ids(1, "committed").tolist() == [] != plan.run_ids(1).tolist()
    )  # so file 1 is judged again


def test_skipped_files_are_waited_for_by_nobody():
    plan = GatePlan([ids(1), ids(1)], [True, False])
    assert plan.ready(1) and plan.run_ids(1).tolist() == []


def test_stale_staging_folders_of_dead_runs_are_removed(tmp_path):
    lake = Lake(root=str(tmp_path / "lake"))
    old, fresh = stage_root(lake, "old"), stage_root(lake, "fresh")
    for folder in (old, fresh):
        os.makedirs(f"{folder}/b-1/raw")
    os.utime(old, (time.time() - 2 * 86_400,) * 2)
    assert remove_stale_stages(lake) == [old]
    assert not os.path.exists(old) and os.path.exists(fresh)
