"""The retrain gates as pure decisions: the cooldown over a set of runs, and the freshness check."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from loopline.lake import Lake
from loopline.retrain import RetrainRun, decide_cooldown, decide_freshness, new_clean_rows

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def run(
    i: int,
    *,
    minutes_ago: float,
    state: str = "Scheduled",
    kind: str = "SCHEDULED",
    model="m",
    reason="drift",
):
    return RetrainRun(
        id=f"run-{i}",
        created=NOW - timedelta(minutes=minutes_ago),
        state_type=kind,
        state_name=state,
        model=model,
        reason=reason,
    )


def test_a_burst_of_five_runs_lets_exactly_the_earliest_proceed_whatever_order_they_check_in():
    burst = [run(i, minutes_ago=1 - i * 0.001) for i in range(5)]  # created a millisecond apart
    for order in itertools.permutations(burst):
        verdicts = {
            me.id: decide_cooldown(list(order), me, now=NOW, cooldown_hours=6).proceed for me in order
        }
        assert verdicts == {"run-0": True, "run-1": False, "run-2": False, "run-3": False, "run-4": False}


def test_runs_created_in_the_same_instant_are_ordered_by_id():
    burst = [run(i, minutes_ago=1) for i in range(3)]
    assert [decide_cooldown(burst, me, now=NOW, cooldown_hours=6).proceed for me in burst] == [
        True,
        False,
        False,
    ]


def test_cooldown_names_the_blocking_run_and_when_it_ends():
    last = run(0, minutes_ago=60, state="Completed", kind="COMPLETED")
    me = run(1, minutes_ago=0)
    decision = decide_cooldown([last, me], me, now=NOW, cooldown_hours=6)
    assert not decision.proceed
    assert decision.details["blocking_run"] == "run-0"
    assert decision.details["cooldown_until"] == (last.created + timedelta(hours=6)).isoformat()
    assert "run-0" in decision.message and "retrain.cooldown_hours=6" in decision.message


@pytest.mark.parametrize(
    "other, proceeds",
    [
        (run(0, minutes_ago=7 * 60, state="Completed", kind="COMPLETED"), True),  # older than the cooldown
        (run(0, minutes_ago=30, state="Skipped", kind="COMPLETED"), True),  # it did not retrain
        (run(0, minutes_ago=30, state="Cancelled", kind="CANCELLED"), True),
        (run(0, minutes_ago=30, state="Failed", kind="FAILED"), False),  # it tried: a crash loop must wait
        (run(0, minutes_ago=30, state="Running", kind="RUNNING"), False),
        (run(0, minutes_ago=30, model="other"), True),  # another model has its own cooldown
        (run(0, minutes_ago=30, reason="manual"), True),  # a manual run neither waits nor blocks
        (run(0, minutes_ago=30, reason="new-data", state="Completed", kind="COMPLETED"), False),
    ],
)
def test_which_earlier_runs_start_a_cooldown(other, proceeds):
    me = run(1, minutes_ago=0)
    assert decide_cooldown([other, me], me, now=NOW, cooldown_hours=6).proceed is proceeds


def test_a_manual_run_is_never_held_by_the_cooldown():
    me = run(1, minutes_ago=0, reason="manual")
    busy = run(0, minutes_ago=5, state="Running", kind="RUNNING")
    assert decide_cooldown([busy, me], me, now=NOW, cooldown_hours=6).proceed


def test_zero_cooldown_turns_it_off():
    first = run(0, minutes_ago=1, state="Completed", kind="COMPLETED")
    me = run(1, minutes_ago=0)
    assert decide_cooldown([first, me], me, now=NOW, cooldown_hours=0).proceed


@pytest.mark.parametrize(
    "reason, new_rows, champion, proceeds",
    [
        ("drift", 0, "3", False),  # the champion already saw everything
        ("drift", 1, "3", True),
        ("new-data", 999, "3", False),  # below min_new_rows
        ("new-data", 1000, "3", True),
        ("manual", 0, "3", False),
        ("drift", 5, None, True),  # no champion: train the first one
        ("new-data", 10, None, False),  # ...once enough rows arrived
        ("new-data", 5000, None, True),
    ],
)
def test_freshness(reason, new_rows, champion, proceeds):
    decision = decide_freshness(
        reason=reason, new_rows=new_rows, min_new_rows=1000, champion_version=champion, since_clean_version=4
    )
    assert decision.proceed is proceeds
    if not proceeds:
        assert str(new_rows) in decision.message or "no new labelled data" in decision.message


def test_new_clean_rows_counts_rows_added_after_the_champions_version(tmp_path):
    from deltalake import write_deltalake

    lake = Lake(root=str(tmp_path / "lake"))
    uri = lake.table_uri("clean", "d")
    write_deltalake(uri, pd.DataFrame({"x": range(100)}))  # v0
    write_deltalake(uri, pd.DataFrame({"x": range(30)}), mode="append")  # v1
    write_deltalake(uri, pd.DataFrame({"x": range(7)}), mode="append")  # v2
    assert new_clean_rows(lake, "d", 0)["new_rows"] == 37
    assert new_clean_rows(lake, "d", 2)["new_rows"] == 0
    assert new_clean_rows(lake, "d", None) == {
        "clean_version": 2,
        "since_clean_version": None,
        "new_rows": 137,
        "rows": 137,
    }
    assert new_clean_rows(lake, "missing", None)["new_rows"] == 0
