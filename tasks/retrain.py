"""Tasks of the retrain flow: the champion, cooldown and freshness gates, and training on the `gpu` pool.

Events are hints: a drift event (forged, stale, or for a model that was never promoted) is checked
against the registry before anything trains. The wait for the `train` deployment's run is bounded
(retrain.train_timeout_seconds); a run still going when it runs out is cancelled, not left to register a
model nobody promotes.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from prefect import task

from loopline.config import LifecycleConfig
from loopline.monitoring.retrain import (
    CLAIM_TAG,
    Decision,
    RetrainRun,
    decide_cooldown,
    decide_freshness,
    new_clean_rows,
)
from tasks.common import lake_for, retry_unless_user_error, run_logger

RETRAIN_FLOW = "retrain"
TRAIN_DEPLOYMENT = "train/train"
GATE_POLL_SECONDS = 2.0  # how often a waiting retrain asks whether earlier runs have decided
RECENT_RUNS_LIMIT = 200  # retrain runs looked at for the cooldown; the trigger keeps bursts far below this


# the registry may hiccup; an unknown model stays unknown
@task(
    name="check-champion", retries=2, retry_delay_seconds=[2, 5], retry_condition_fn=retry_unless_user_error
)
def check_champion(cfg: LifecycleConfig, model: str, reason: str) -> dict[str, Any]:
    """May a `reason` event for `model` retrain it? Only when the model has a @champion (its drift is what
    the event reports), or when retrain.on_drift_without_champion says to train one anyway. So an event
    for an unknown model, or for one never promoted, trains and promotes nothing by default."""
    champion = champion_training_data(cfg, model)
    if champion is not None:
        message = f"{model} has champion v{champion['version']}"
        return {"proceed": True, "message": message, "details": {"champion_version": champion["version"]}}
    what = "is registered but has no @champion" if _is_registered(cfg, model) else "is not a registered model"
    details = {"champion_version": None, "on_drift_without_champion": cfg.retrain.on_drift_without_champion}
    if cfg.retrain.on_drift_without_champion:
        message = f"{model} {what}; retrain.on_drift_without_champion is on: training one"
        run_logger().info("champion: %s", message)
        return {"proceed": True, "message": message, "details": details}
    message = (
        f"a {reason} event for model {model!r}, which {what}: with no champion there is nothing whose drift "
        f"could call for a retrain, so nothing trains (events are hints; set "
        f"retrain.on_drift_without_champion=true to train a first model on such an event)"
    )
    run_logger().info("champion: %s", message)
    return {"proceed": False, "message": message, "details": details}


def _is_registered(cfg: LifecycleConfig, model: str) -> bool:
    from mlflow.exceptions import MlflowException

    from loopline.packaging.registry import default_tracking_uri, registry_client

    try:
        registry_client(default_tracking_uri(cfg.home)).get_registered_model(model)
    except MlflowException:  # not registered, or not even a valid registry name
        return False
    return True


# the Prefect API may hiccup; the decision itself is pure
@task(
    name="check-cooldown", retries=2, retry_delay_seconds=[2, 5], retry_condition_fn=retry_unless_user_error
)
def check_cooldown(cfg: LifecycleConfig, model: str, reason: str) -> dict[str, Any]:
    """May this run retrain, given the other retrain runs of `model` the Prefect API knows? Waits (up to
    retrain.gate_wait_seconds) while earlier runs have not decided yet."""
    from prefect import get_client
    from prefect.runtime import flow_run

    log = run_logger()
    deadline = time.monotonic() + cfg.retrain.gate_wait_seconds
    with get_client(sync_client=True) as client:
        while True:
            decision = cooldown_decision(client, flow_run.get_id(), model, reason, cfg.retrain.cooldown_hours)
            if not decision.waiting_for:
                break
            if time.monotonic() >= deadline:
                decision = Decision(
                    False,
                    f"earlier retrain run(s) {decision.waiting_for} of {model} did not decide within "
                    f"{cfg.retrain.gate_wait_seconds:g} s (retrain.gate_wait_seconds): leaving the retrain to them",
                    decision.details,
                )
                break
            log.info("cooldown: %s", decision.message)
            time.sleep(GATE_POLL_SECONDS)
    log.info("cooldown: %s", decision.message)
    return _as_dict(decision)


@task(name="claim-retrain", retries=2, retry_delay_seconds=[2, 5])
def claim_retrain() -> str:
    """Tag this flow run as the one that retrains (later runs of the model see it and stop)."""
    from prefect import get_client
    from prefect.runtime import flow_run

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run.get_id())
        client.update_flow_run(run.id, tags=sorted({*run.tags, CLAIM_TAG}))
    return CLAIM_TAG


def cooldown_decision(
    client, run_id: str, model: str, reason: str, cooldown_hours: float, now: datetime | None = None
) -> Decision:
    """The cooldown verdict for flow run `run_id` from the recent runs of the retrain flow."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    runs = client.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=[RETRAIN_FLOW])),
        sort=FlowRunSort.EXPECTED_START_TIME_DESC,
        limit=RECENT_RUNS_LIMIT,
        offset=0,
    )
    mine = next((r for r in runs if str(r.id) == str(run_id)), None) or client.read_flow_run(run_id)
    me = _as_retrain_run(mine, model=model, reason=reason)
    others = [_as_retrain_run(r) for r in runs]
    return decide_cooldown(others, me, now=now or datetime.now(UTC), cooldown_hours=cooldown_hours)


@task(
    name="check-freshness", retries=2, retry_delay_seconds=[2, 5], retry_condition_fn=retry_unless_user_error
)
def check_freshness(cfg: LifecycleConfig, model: str, dataset: str, reason: str) -> dict[str, Any]:
    """New labelled rows in clean/D since the champion's training data (the Delta version it recorded)."""
    champion = champion_training_data(cfg, model)
    since = champion["clean_version"] if champion else None
    counted = new_clean_rows(lake_for(cfg), dataset, since)
    decision = decide_freshness(
        reason=reason,
        new_rows=counted["new_rows"],
        min_new_rows=cfg.retrain.min_new_rows,
        champion_version=champion["version"] if champion else None,
        since_clean_version=since,
    )
    run_logger().info("freshness: %s", decision.message)
    out = _as_dict(decision)
    out["details"].update(counted)
    return out


# the registry may hiccup
@task(name="find-model-dataset", retries=2, retry_delay_seconds=[2, 10])
def model_dataset(cfg: LifecycleConfig, model: str) -> str | None:
    """The dataset `model` was trained on (its newest version's run tag); None for an unknown model."""
    from loopline.packaging.registry import dataset_of_model, default_tracking_uri, registry_client

    return dataset_of_model(registry_client(default_tracking_uri(cfg.home)), model)


def champion_training_data(cfg: LifecycleConfig, model: str) -> dict[str, Any] | None:
    """The champion's version and the clean/D version its training run read; None without a champion."""
    from mlflow.exceptions import MlflowException

    from loopline.packaging.registry import CHAMPION, default_tracking_uri, registry_client

    client = registry_client(default_tracking_uri(cfg.home))
    try:
        version = client.get_model_version_by_alias(model, CHAMPION)
    except MlflowException:  # no such model, or no champion alias yet
        return None
    tags = client.get_run(version.run_id).data.tags if version.run_id else {}
    clean = tags.get("data.clean_version") or ""
    return {
        "version": str(version.version),
        "run_id": version.run_id,
        "clean_version": int(clean) if clean.strip().isdigit() else None,
    }


@task(name="train-on-gpu-pool")
def train_on_pool(cfg: LifecycleConfig, dataset: str, features_version: int | None) -> dict[str, Any] | None:
    """Run the `train` deployment (work pool `gpu`) as a child of this run and wait for it, at most
    retrain.train_timeout_seconds (then it is cancelled and WaitTimeoutError says why). None when there
    is no such deployment (then the caller trains in this process)."""
    from prefect import get_client
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(TRAIN_DEPLOYMENT)
        except ObjectNotFound:
            return None
        job_variables = training_pool_job_variables(client, deployment.work_pool_name, cfg)
    params = {"config": cfg.model_dump(mode="json"), "dataset": dataset, "features_version": features_version}
    timeout_s = cfg.retrain.train_timeout_seconds
    child = run_deployment(
        TRAIN_DEPLOYMENT,
        parameters=params,
        job_variables=job_variables or None,
        as_subflow=True,
        timeout=timeout_s,
        poll_interval=2,
    )
    if child.state is None or not child.state.is_final():
        raise _train_timeout(child, timeout_s)
    if not child.state.is_completed():
        state = child.state.name if child.state else "unknown"
        raise RuntimeError(
            f"train run {child.name} ({child.id}) on the gpu pool ended {state}: {child.state.message if child.state else ''}"
        )
    run_logger().info("trained on the gpu pool: flow run %s", child.id)
    return child.state.result()


def training_pool_job_variables(client, pool_name: str | None, cfg: LifecycleConfig) -> dict[str, Any]:
    """The GPU count and kind of cfg.training (loopline.train.job_variables), as the variables the pool
    `pool_name`'s base job template declares: a kubernetes or docker gpu pool gets its GPU limit, a process
    pool (`loopline up`) gets nothing."""
    from prefect.exceptions import ObjectNotFound

    from loopline.train.job_variables import pool_job_variables, training_job_variables

    if not pool_name:
        return {}
    try:
        template = client.read_work_pool(pool_name).base_job_template or {}
    except ObjectNotFound:  # no pool yet: no worker can take the run either, and the wait says so
        return {}
    declared = (template.get("variables") or {}).get("properties") or {}
    return pool_job_variables(training_job_variables(cfg.training), declared, pool_name)


def _train_timeout(child, timeout_s: float) -> Exception:
    """Cancel the child run that outlived the wait (a late training would register a model that no one
    evaluates) and say what to check."""
    from prefect import get_client
    from prefect.states import Cancelled, Cancelling

    from loopline.errors import WaitTimeoutError

    state = child.state.name if child.state else "unknown"
    note = f"given up while {state}"
    try:
        with get_client(sync_client=True) as client:
            if child.state is None or child.state.is_scheduled():  # no worker took it: nothing to stop
                client.set_flow_run_state(
                    child.id, Cancelled(message="retrain.train_timeout_seconds ran out")
                )
                note = f"cancelled while {state}"
            else:  # a worker has it: ask the worker to stop it
                client.set_flow_run_state(
                    child.id, Cancelling(message="retrain.train_timeout_seconds ran out")
                )
                note = f"asked to cancel while {state}"
    except Exception as exc:  # the error below matters more than the cancellation
        run_logger().warning("could not cancel train run %s: %s", child.id, exc)
    return WaitTimeoutError(
        f"the train run {child.name} ({child.id}) of deployment {TRAIN_DEPLOYMENT!r} did not finish within "
        f"{timeout_s:g} s (retrain.train_timeout_seconds); it was {note}. Check that a worker polls the "
        f"`gpu` work pool (`prefect worker start --pool gpu`), that the `gpu` concurrency limit has free slots "
        f"(`prefect gcl inspect gpu`), or raise retrain.train_timeout_seconds for longer trainings."
    )


def _as_retrain_run(run, *, model: str | None = None, reason: str | None = None) -> RetrainRun:
    params = run.parameters or {}
    return RetrainRun(
        id=str(run.id),
        created=run.created or run.expected_start_time,
        state_type=run.state.type.value if run.state else "SCHEDULED",
        state_name=run.state.name if run.state else "Scheduled",
        model=model or params.get("model"),
        reason=reason or params.get("reason"),
        claimed=CLAIM_TAG in (run.tags or []),
    )


def _as_dict(decision: Decision) -> dict[str, Any]:
    return {"proceed": decision.proceed, "message": decision.message, "details": dict(decision.details)}
