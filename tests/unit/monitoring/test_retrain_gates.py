"""The retrain gates as pure decisions: the cooldown over a set of runs, and the freshness check."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from loopline.monitoring.retrain import RetrainRun, decide_cooldown, decide_freshness, new_clean_rows
from loopline.storage.lake import Lake

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def run(
    i: int,
    *,
    minutes_ago: float,
    state: str = "Scheduled",
    kind: str = "SCHEDULED",
    model="m",
    reason="drift",
    claimed=False,
):
    return RetrainRun(
        id=f"run-{i}",
        created=NOW - timedelta(minutes=minutes_ago),
        state_type=kind,
        state_name=state,
        model=model,
        reason=reason,
        claimed=claimed,
    )


def verdicts(runs: list[RetrainRun], cooldown_hours: float = 6) -> list[str]:
    out = []
    for me in runs:
        d = decide_cooldown(runs, me, now=NOW, cooldown_hours=cooldown_hours)
        out.append("go" if d.proceed else ("wait" if d.waiting_for else "stop"))
    return out


def test_a_burst_of_five_runs_resolves_to_one_retrain_whatever_order_they_check_in():
    burst = [run(i, minutes_ago=1 - i * 0.001) for i in range(5)]  # created a millisecond apart
    for order in itertools.permutations(burst):
        seen = {me.id: decide_cooldown(list(order), me, now=NOW, cooldown_hours=6) for me in order}
        assert seen["run-0"].proceed
        for i in range(1, 5):
            assert seen[f"run-{i}"].waiting_for == [f"run-{j}" for j in range(i)]
    # run-0 passes its gates and claims: the others stop, naming it
    burst[0] = run(0, minutes_ago=1, state="Running", kind="RUNNING", claimed=True)
    assert verdicts(burst) == ["go", "stop", "stop", "stop", "stop"]
    assert decide_cooldown(burst, burst[3], now=NOW, cooldown_hours=6).details["blocking_run"] == "run-0"


def test_a_run_that_stopped_at_its_gates_does_not_hold_back_the_next():
    # e.g. a new-data run without enough rows, created a moment before a drift run
    first = run(0, minutes_ago=2, state="Skipped", kind="COMPLETED", reason="new-data")
    runs = [first, run(1, minutes_ago=1), run(2, minutes_ago=0.5)]
    assert verdicts(runs) == ["go", "go", "wait"]


def test_runs_created_in_the_same_instant_are_ordered_by_id():
    burst = [run(i, minutes_ago=1) for i in range(3)]
    assert verdicts(burst) == ["go", "wait", "wait"]


def test_cooldown_names_the_blocking_run_and_when_it_ends():
    last = run(0, minutes_ago=60, state="Completed", kind="COMPLETED")
    me = run(1, minutes_ago=0)
    decision = decide_cooldown([last, me], me, now=NOW, cooldown_hours=6)
    assert not decision.proceed and not decision.waiting_for
    assert decision.details["blocking_run"] == "run-0"
    assert decision.details["cooldown_until"] == (last.created + timedelta(hours=6)).isoformat()
    assert "run-0" in decision.message and "retrain.cooldown_hours=6" in decision.message


@pytest.mark.parametrize(
    "other, verdict",
    [
        (run(0, minutes_ago=7 * 60, state="Completed", kind="COMPLETED"), "go"),  # older than the cooldown
        (run(0, minutes_ago=30, state="Completed", kind="COMPLETED"), "stop"),
        (run(0, minutes_ago=30, state="Skipped", kind="COMPLETED"), "go"),  # it did not retrain
        (run(0, minutes_ago=30, state="Cancelled", kind="CANCELLED"), "go"),
        (
            run(0, minutes_ago=30, state="Failed", kind="FAILED", claimed=True),
            "stop",
        ),  # a crash loop must wait
        (run(0, minutes_ago=30, state="Failed", kind="FAILED"), "go"),  # failed at its gates: no retrain
        (run(0, minutes_ago=30, state="Running", kind="RUNNING", claimed=True), "stop"),
        (run(0, minutes_ago=30, state="Running", kind="RUNNING"), "wait"),  # still at its gates
        (run(0, minutes_ago=30, state="Late", kind="SCHEDULED"), "wait"),
        (run(0, minutes_ago=30, model="other", claimed=True), "go"),  # another model has its own cooldown
        (
            run(0, minutes_ago=30, reason="manual", claimed=True),
            "go",
        ),  # a manual run neither waits nor blocks
        (run(0, minutes_ago=30, reason="new-data", state="Completed", kind="COMPLETED"), "stop"),
    ],
)
def test_which_earlier_runs_stop_or_hold_a_retrain(other, verdict):
    assert verdicts([other, run(1, minutes_ago=0)])[1] == verdict


def test_a_manual_run_is_never_held_by_the_cooldown():
    me = run(1, minutes_ago=0, reason="manual")
    busy = run(0, minutes_ago=5, state="Running", kind="RUNNING", claimed=True)
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
