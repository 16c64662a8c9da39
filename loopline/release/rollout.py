"""Progressive delivery: a candidate that passed the offline gate as `@challenger`, its traffic share in steps,
and the verdict on each step. No Prefect here (tasks/canary.py adds events and artifacts; flows/canary.py
runs the loop).

The registry is the only channel to the serving fleet: the step's weight is a JSON tag on the @challenger
version (loopline.serving.registry_source.ROLLOUT_TAG) that every replica reads at its poll, so all of them
split alike, whichever process runs the analysis. Order of writes, so no replica ever sees a half state:

    start     tag (first step's weight) -> alias @challenger
    ramp      tag (next weight)
    abort     alias removed -> tag removed          (the champion keeps 100%; replicas drop the challenger)
    complete  @champion moves (check-and-set, as a promotion; history action "canary") -> alias removed

`decide` is the state machine, pure: a step holds until it has lasted min_step_seconds and seen
min_step_requests challenger requests; any failed check aborts; the last step (or a shadow run) completes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from loopline.config import LifecycleConfig, RolloutConfig
from loopline.errors import LooplineError
from loopline.packaging.registry import CHALLENGER
from loopline.release.champion import (
    PromotionConflict,
    get_alias,
    move_champion,
    now_iso,
    promotion_lock,
    read_state,
    reconcile,
    retry_locked,
    tag_version,
)
from loopline.serving.registry_source import ROLLOUT_TAG

HOLD, RAMP, ABORT, COMPLETE = "hold", "ramp", "abort", "complete"
OUTCOME_TAG = "loopline.rollout.outcome"  # on the version, once a rollout ends: action, reason, time


class RolloutError(LooplineError):
    """A rollout that cannot start or go on (another one in progress, the version is the champion, ...)."""


@dataclass
class Verdict:
    action: str  # hold | ramp | abort | complete
    reason: str
    checks: list[dict[str, Any]] = field(default_factory=list)


def weights(rcfg: RolloutConfig, mode: str) -> list[float]:
    """The challenger's share of requests at each step (shadow: one step at 0, every request copied)."""
    return [0.0] if mode == "shadow" else [round(p / 100.0, 6) for p in rcfg.steps]


def read_rollout(client, model: str) -> tuple[int | None, dict[str, Any] | None]:
    """(the @challenger version or None, its rollout tag or None): what the servers follow."""
    version = get_alias(client, model, CHALLENGER)
    if version is None:
        return None, None
    mv = retry_locked(client.get_model_version, model, str(version))
    raw = (mv.tags or {}).get(ROLLOUT_TAG)
    try:
        return version, (json.loads(raw) if raw else None)
    except ValueError:
        return version, None


def publish(client, model: str, version: int, *, mode: str, step: int, weight: float) -> dict[str, Any]:
    """The weight every replica applies from its next poll on."""
    tag = {"mode": mode, "step": step, "weight": weight, "published_at": now_iso()}
    retry_locked(client.set_model_version_tag, model, str(version), ROLLOUT_TAG, json.dumps(tag))
    return tag


def start(client, cfg: LifecycleConfig, model: str, version: int, mode: str) -> dict[str, Any]:
    """Make `version` the challenger at its first step. Refuses when it is the champion or another version is
    mid-rollout (one rollout per model); restarting the same version's rollout starts it over."""
    if mode not in ("canary", "shadow"):
        raise RolloutError(f"rollout.mode {mode!r}: a rollout needs 'canary' or 'shadow'")
    with promotion_lock(cfg.home, model, cfg.evaluation.lock_timeout_seconds):
        champion = reconcile(client, model, read_state(client, model)).champion
        if champion is None:
            raise RolloutError(f"model {model!r} has no @champion: the first version is promoted directly")
        if champion == version:
            raise RolloutError(f"{model} v{version} is already @champion: nothing to roll out")
        current, tag = read_rollout(client, model)
        if current is not None and current != version and tag is not None:
            raise RolloutError(
                f"{model} v{current} is mid-rollout as @challenger (step {tag.get('step')}); let its "
                f"canary-analysis run finish or abort it before rolling out v{version}"
            )
        first = weights(cfg.rollout, mode)[0]
        tag = publish(client, model, version, mode=mode, step=0, weight=first)  # the weight first ...
        retry_locked(client.set_registered_model_alias, model, CHALLENGER, str(version))  # ... then the alias
    return {"model": model, "version": version, "champion": champion, "mode": mode, **tag}


def withdraw(client, model: str, version: int, *, action: str, reason: str) -> None:
    """Remove the challenger (abort): the alias first, so replicas drop it at their next poll, then the tag;
    the outcome stays on the version."""
    if get_alias(client, model, CHALLENGER) == version:
        retry_locked(client.delete_registered_model_alias, model, CHALLENGER)
    _clear_tag(client, model, version)
    tag_version(client, model, version, {OUTCOME_TAG: {"action": action, "reason": reason, "at": now_iso()}})


def complete(
    client,
    cfg: LifecycleConfig,
    model: str,
    version: int,
    *,
    expected_champion: int,
    reason: str,
    metrics=None,
) -> dict[str, Any]:
    """Promote the challenger: @champion/@previous move as in a promotion (check-and-set against the
    champion the rollout started from), then @challenger is cleared. Returns the history entry."""
    with promotion_lock(cfg.home, model, cfg.evaluation.lock_timeout_seconds):
        try:
            entry = move_champion(
                client,
                model,
                version,
                expected=expected_champion,
                action="canary",
                reason=reason,
                metrics=metrics or {},
            )
        except PromotionConflict as exc:
            raise RolloutError(
                f"{exc}: the canary of v{version} was judged against another champion"
            ) from exc
    if get_alias(client, model, CHALLENGER) == version:
        retry_locked(client.delete_registered_model_alias, model, CHALLENGER)
    _clear_tag(client, model, version)
    tag_version(
        client,
        model,
        version,
        {
            OUTCOME_TAG: {"action": COMPLETE, "reason": reason, "at": entry["time"]},
            "loopline.promoted_at": entry["time"],
            "loopline.promotion_reason": reason,
        },
    )
    return entry


def _clear_tag(client, model: str, version: int) -> None:
    from mlflow.exceptions import MlflowException

    try:
        retry_locked(client.delete_model_version_tag, model, str(version), ROLLOUT_TAG)
    except MlflowException:  # not there: nothing to clear
        pass


def decide(
    rcfg: RolloutConfig, *, step: int, n_steps: int, step_seconds: float, analysis: dict[str, Any]
) -> Verdict:
    """Ramp, hold, abort or complete the current step from its measurements (canary_analysis.analyse)."""
    checks = analysis["checks"]
    n = analysis["challenger"]["requests"] + analysis["challenger"]["errors"]
    failed = [c for c in checks if c["passed"] is False]
    if n < rcfg.min_step_requests:
        if step_seconds >= rcfg.step_timeout_seconds:
            why = f"only {n} challenger requests in {step_seconds:.0f} s (step_timeout_seconds)"
            return Verdict(ABORT, f"not enough traffic for a verdict: {why}", checks)
        return Verdict(HOLD, f"{n}/{rcfg.min_step_requests} challenger requests so far", checks)
    if failed:
        return Verdict(ABORT, f"{failed[0]['name']}: {failed[0]['detail']}", checks)
    if step_seconds < rcfg.min_step_seconds:
        return Verdict(HOLD, f"{step_seconds:.0f}/{rcfg.min_step_seconds:.0f} s at this step", checks)
    if step == n_steps - 1:
        return Verdict(COMPLETE, f"every check passed at the last step ({n} challenger requests)", checks)
    return Verdict(RAMP, f"every check passed ({n} challenger requests, {step_seconds:.0f} s)", checks)
