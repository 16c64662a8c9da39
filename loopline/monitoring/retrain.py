"""When an event-triggered retrain may run: the cooldown and the freshness check (no prefect here).

Cooldown: no event-triggered retrain of model M within `retrain.cooldown_hours` of the last one. A run
that passes both gates *claims* the retrain (its flow run is tagged `CLAIM_TAG`) before any work. The
runs are ordered by (created, id), and a run only ever waits on earlier ones, so a burst of runs
created together resolves the same way in each of them:

- an earlier run of M in the window that claimed (or completed a retrain) -> cooldown: stop;
- an earlier run that has not decided yet (scheduled, or still at its gates) -> wait for it;
- earlier runs that stopped at a gate (state "Skipped"), were cancelled, or failed before claiming
  did not retrain -> they do not count.

So of five simultaneous drift runs the first claims and the other four stop; and a new-data run that
stops for lack of rows does not hold back the drift run created a moment after it.

Freshness: retraining on the data the champion already saw gives the same model. New labelled rows are
the clean rows added to clean/D after the Delta version the champion's training run recorded
(`data.clean_version`); a drift retrain needs at least one, a new-data retrain `retrain.min_new_rows`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from loopline.storage import delta
from loopline.storage.lake import Lake

EVENT_REASONS = ("drift", "new-data")  # reasons set by deployment triggers; anything else is manual
SKIPPED_STATE = "Skipped"
CLAIM_TAG = "loopline.retrain.claimed"  # a Prefect run tag (stored data, not a module path): pre-regroup name
FINAL_TYPES = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


@dataclass(frozen=True)
class RetrainRun:
    """A retrain flow run as the cooldown sees it."""

    id: str
    created: datetime
    state_type: str
    state_name: str
    model: str | None
    reason: str | None
    claimed: bool = False

    @property
    def event_triggered(self) -> bool:
        return self.reason in EVENT_REASONS

    @property
    def retrained(self) -> bool:
        """It claimed the retrain (or, untagged, completed one)."""
        return self.claimed or (self.state_type == "COMPLETED" and self.state_name != SKIPPED_STATE)

    @property
    def undecided(self) -> bool:
        """Not final and not claimed: it may still claim."""
        return not self.claimed and self.state_type not in FINAL_TYPES


@dataclass(frozen=True)
class Decision:
    proceed: bool
    message: str
    details: dict[str, Any]
    waiting_for: list[str] = field(default_factory=list)  # undecided earlier runs: ask again later


def decide_cooldown(
    runs: list[RetrainRun], me: RetrainRun, *, now: datetime, cooldown_hours: float
) -> Decision:
    """May `me` retrain? Only event-triggered runs of the same model count, and only earlier ones."""
    if not me.event_triggered:
        return Decision(True, f"reason {me.reason!r} is not an event: no cooldown", {})
    since = now - timedelta(hours=cooldown_hours)
    earlier = sorted(
        (
            r
            for r in runs
            if r.id != me.id
            and r.model == me.model
            and r.event_triggered
            and r.created >= since
            and (r.created, r.id) < (me.created, me.id)
        ),
        key=lambda r: (r.created, r.id),
    )
    retrained = [r for r in earlier if r.retrained]
    if retrained:
        opener = retrained[0]  # the run that opened this cooldown window (only one per window retrains)
        until = opener.created + timedelta(hours=cooldown_hours)
        return Decision(
            False,
            f"cooldown: event-triggered retrain {opener.id} of {me.model} started {opener.created.isoformat()} "
            f"({opener.state_name}); the next may start after {until.isoformat()} "
            f"(retrain.cooldown_hours={cooldown_hours:g})",
            {
                "blocking_run": opener.id,
                "blocking_state": opener.state_name,
                "cooldown_until": until.isoformat(),
            },
        )
    undecided = [r.id for r in earlier if r.undecided]
    if undecided:
        return Decision(
            False,
            f"waiting for {len(undecided)} earlier retrain run(s) of {me.model} to pass or stop at their gates",
            {"waiting_for": undecided},
            waiting_for=undecided,
        )
    return Decision(True, f"no event-triggered retrain of {me.model} in the last {cooldown_hours:g} h", {})


def count_rows(lake: Lake, uri: str, version: int | None = None) -> int:
    """Rows of a Delta table (at `version`) from its add actions: no data file is read."""
    table = delta.open_table(lake, uri, version)
    if table is None:
        return 0
    return delta.files_and_rows(table)[1]


def new_clean_rows(lake: Lake, dataset: str, since_version: int | None) -> dict[str, Any]:
    """Clean rows added after `since_version` of clean/D (all of them when None)."""
    uri = lake.table_uri("clean", dataset)
    current_version = delta.table_version(lake, uri)
    now_rows = count_rows(lake, uri)
    then_rows = 0 if since_version is None else count_rows(lake, uri, since_version)
    return {
        "clean_version": current_version,
        "since_clean_version": since_version,
        "new_rows": max(now_rows - then_rows, 0),
        "rows": now_rows,
    }


def decide_freshness(
    *,
    reason: str,
    new_rows: int,
    min_new_rows: int,
    champion_version: str | None,
    since_clean_version: int | None,
) -> Decision:
    """Enough new labelled data to retrain on? A new-data retrain needs `min_new_rows`, any other one
    row; with no champion yet every clean row is new."""
    details = {
        "new_rows": new_rows,
        "champion_version": champion_version,
        "since_clean_version": since_clean_version,
    }
    needed = min_new_rows if reason == "new-data" else 1
    if champion_version is None:
        if new_rows >= needed:
            return Decision(
                True, f"no champion yet: train the first one on {new_rows} labelled row(s)", details
            )
        return Decision(
            False,
            f"no champion yet and only {new_rows} labelled row(s); retrain.min_new_rows is {min_new_rows}",
            {**details, "needed": needed},
        )
    if new_rows >= needed:
        return Decision(
            True, f"{new_rows} new labelled row(s) since champion v{champion_version} was trained", details
        )
    what = (
        f"only {new_rows} new labelled row(s) since champion v{champion_version} was trained "
        f"(clean version {since_clean_version}); retrain.min_new_rows is {min_new_rows}"
        if reason == "new-data"
        else f"no new labelled data since champion v{champion_version} was trained (clean version "
        f"{since_clean_version}): a retrain would learn nothing new"
    )
    return Decision(False, what, {**details, "needed": needed})
