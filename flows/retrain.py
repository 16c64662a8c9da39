"""Retrain flow: the `retrain` deployment, started by `loopline.drift.detected` or `loopline.data.ingested`.

Reads top-down as the decision it makes: champion (drift events) -> cooldown -> freshness -> features ->
train (on the `gpu` pool when deployed) -> evaluate + promote -> deploy. A run that stops at a gate ends
in the state "Skipped" (completed) with the reason as its message and in its result, so the UI and the
API both say why.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.states import Completed

import flows.heartbeats  # noqa: F401  (flow runs end without waiting on their heartbeat thread)
from loopline.config import LifecycleConfig, resolve_config
from loopline.monitoring.retrain import SKIPPED_STATE
from loopline.packaging.registry import contract_dataset, model_name_for
from tasks.common import run_logger, unlinked
from tasks.retrain import (
    check_champion,
    check_cooldown,
    check_freshness,
    claim_retrain,
    model_dataset,
    train_on_pool,
)


@flow(name="retrain", log_prints=True)
def retrain_flow(
    config: LifecycleConfig | None = None,
    model: str | None = None,
    reason: str = "manual",
    event_payload: dict[str, Any] | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Retrain `model` (default: config.model_name, else the dataset). `reason` is "drift" or
    "new-data" when an event started the run (then the cooldown applies), "manual" otherwise. A new-data
    event names a dataset D (its model is D); any other run finds the model's dataset in the registry;
    `event_payload` is the triggering event's payload, recorded in the result. `force` skips the
    freshness check (not the cooldown). A drift event for a model with no @champion (unknown, never
    promoted, or forged) trains nothing unless retrain.on_drift_without_champion; a new-data event still
    trains a dataset's first model."""
    cfg = resolve_config(config)
    result: dict[str, Any] = {"model": model, "dataset": None, "reason": reason, "event": event_payload or {}}
    # Which model, which dataset: from the event or the parameters, never from the platform's config
    if reason == "new-data":
        dataset = model or contract_dataset(cfg)
        model_name = dataset
    else:
        model_name = result["model"] = model or model_name_for(cfg)
        # Gate 0: events are hints; a drift event is about a champion, so without one nothing trains
        if reason == "drift":
            result["champion"] = check_champion(cfg, model_name, reason)
            if not result["champion"]["proceed"]:
                return _skipped(result, result["champion"]["message"])
        dataset = model_dataset(cfg, model_name) or contract_dataset(cfg)
    cfg = cfg.for_dataset(dataset)
    result.update(model=model_name, dataset=dataset)

    # Gate 1: cooldown (event-triggered runs only; a burst of events starts one retrain)
    result["cooldown"] = check_cooldown(cfg, model_name, reason)
    if not result["cooldown"]["proceed"]:
        return _skipped(result, result["cooldown"]["message"])
    # Gate 2: freshness (new labelled rows since the champion was trained)
    result["freshness"] = check_freshness(cfg, model_name, dataset, reason)
    if not result["freshness"]["proceed"] and not force:
        return _skipped(result, result["freshness"]["message"])
    # Claim: from here on this run is the retrain of the model; later runs see the tag and stop
    claim_retrain()

    # Features: bring features/D up to date with clean/D (cached when nothing changed)
    from flows.features import features_flow

    result["features"] = features_flow(cfg)
    # Train: on the gpu pool when the `train` deployment exists and this run is a deployment run (each
    # subflow gets its own copy of a name: tasks.common.unlinked)
    train_cfg = cfg.model_copy(update={"model_name": unlinked(model_name)})
    result["train"] = _train(train_cfg, unlinked(dataset), result["features"])
    # Evaluate + promote: the challenger against the champion
    result["promotion"] = _promote(cfg, unlinked(model_name), int(result["train"]["model_version"]))
    # Deploy: serving picks up the new champion
    result["deployment"] = _deploy(cfg, unlinked(model_name), result["promotion"])
    return result


def _train(cfg: LifecycleConfig, dataset: str, features: dict[str, Any]) -> dict[str, Any]:
    from prefect.runtime import deployment

    features_version = features.get("features_version")
    # a Kubernetes launcher starts its own GPU pods: the train flow then runs here, on the cpu pool
    if cfg.retrain.train_on_pool and deployment.id and cfg.training.launcher == "local":
        trained = train_on_pool(cfg, dataset, features_version)
        if trained is not None:
            return trained
    from flows.training import train_flow

    return train_flow(cfg, dataset, features_version=features_version)


def _promote(cfg: LifecycleConfig, model: str, version: int) -> dict[str, Any]:
    from flows.promotion import promotion_flow

    return promotion_flow(cfg, model=model, version=version)


def _deploy(cfg: LifecycleConfig, model: str, promotion: dict[str, Any]) -> dict[str, Any]:
    """Reload the running model servers onto the new champion (an unhealthy swap rolls back). A retrain
    starts no server: one that starts later serves @champion anyway."""
    if not promotion.get("promoted"):
        return {"deployed": False, "reason": "no new champion"}
    if not cfg.serving.deploy:
        return {"deployed": False, "reason": "serving.deploy is off"}
    from flows.deployment import deployment_flow

    return deployment_flow(cfg, model=model, start_if_missing=False)


def _skipped(result: dict[str, Any], message: str) -> Completed:
    run_logger().info("retrain of %s skipped: %s", result["model"], message)
    result.update(skipped=True, message=message)
    return Completed(name=SKIPPED_STATE, message=message, data=result)
