"""Drift flow (`loopline drift`, the `drift-watch` deployment): the champion's current window against the
reference profile stored with it at training time. Training data is never re-read.

When drift is detected it emits `loopline.drift.detected` for `loopline.model.M`, which starts the
`retrain` deployment.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.states import Completed, State

import flows.heartbeats  # noqa: F401  (flow runs end without waiting on their heartbeat thread)
from loopline.config import LifecycleConfig, resolve_config
from loopline.monitoring.retrain import SKIPPED_STATE
from loopline.packaging.registry import model_name_for, tracking_uri_for
from tasks.common import run_logger
from tasks.drift import detect_window, find_champion, list_champions, report_drift
from tasks.feedback import live_performance_check
from tasks.stage_cache import champion_alias


@flow(name="drift", log_prints=True)
def drift_flow(
    config: LifecycleConfig | None = None,
    model: str | None = None,
    current: str | None = None,
    window_hours: float | None = None,
    skip_unknown_model: bool = False,
    all_models: bool = False,
) -> dict[str, Any]:
    """Check `model` (default: config.model_name, else the dataset) for drift.

    `current`: a data file (local or s3://), or `batch:ID` / `batch:latest` (a batch of clean/D);
    default: what the champion scored in the last `window_hours` (default drift.window_hours).
    `skip_unknown_model`: a model not registered yet ends the run as Skipped instead of an error (the
    scheduled drift-watch on a fresh stack). `all_models`: check every model that has a @champion (the
    drift-watch deployment; `model` is ignored) and return {"models": {name: result}}.
    Returns drift_detected, drift_share, prediction_drift, features {name: {method, score, threshold,
    drift}}, event_emitted (true only when the Prefect API accepted the drift event), plus the model
    version and the window.
    """
    cfg = resolve_config(config)
    if all_models:
        # Watch: every champion in the registry, whatever dataset it serves (a skip is one model's result)
        checked = {name: check_drift(cfg, name, current, window_hours, True) for name in list_champions(cfg)}
        return {"models": {k: v.result() if isinstance(v, State) else v for k, v in checked.items()}}
    return check_drift(cfg, model or model_name_for(cfg), current, window_hours, skip_unknown_model)


def check_drift(
    cfg: LifecycleConfig,
    model_name: str,
    current: str | None,
    window_hours: float | None,
    skip_unknown_model: bool,
) -> dict[str, Any] | Completed:
    """The drift flow's check of one model; its tasks run in the caller's flow run (the drift flow's, or
    the lifecycle's). A skip is a Completed state named Skipped carrying the result."""
    hours = float(window_hours or cfg.drift.window_hours)

    # Reference: the champion's profile, stored with the model at training time (none yet: known from a
    # query on the registry, without starting mlflow)
    if skip_unknown_model and champion_alias(tracking_uri_for(cfg, None), model_name) is None:
        champion = None
    else:
        champion = find_champion(cfg, model_name, missing_ok=skip_unknown_model)
    if champion is None:
        return _skipped(
            model_name,
            None,
            f"model {model_name!r} has no @champion yet (or is not registered): nothing to compare",
        )
    # Detect: stream the current window through the profile
    detected = detect_window(cfg, champion, current, hours)
    report, window = detected["report"], detected["window"]
    if report is None:
        return _skipped(
            model_name, champion["version"], f"the window ({window['description']}) has no rows", window
        )
    if report["n_current"] < cfg.drift.min_rows:  # too few rows to tell drift from sampling noise
        return _skipped(
            model_name,
            champion["version"],
            f"the window ({window['description']}) has {report['n_current']} row(s), fewer than "
            f"drift.min_rows={cfg.drift.min_rows}: too few to judge drift (no verdict, no event)",
            window,
        )
    # Live performance: the champion's metric on labelled traffic (feedback/M), when labels came back;
    # worse than its evaluation by more than feedback.performance_tolerance counts as drift
    performance = live_performance_check(cfg, champion, hours)
    if performance is not None and performance["degraded"]:
        report = {**report, "drift_detected": True}
    # Report: artifacts, gauges, verdict table; the event that starts a retrain
    emitted = report_drift(cfg, champion, report, window)
    return {
        "model": model_name,
        "model_version": champion["version"],
        "drift_detected": report["drift_detected"],
        "drift_share": report["drift_share"],
        "prediction_drift": report["prediction_drift"],
        "features": report["features"],
        "drifted_features": report["drifted_features"],
        "prediction": report.get("prediction"),
        "performance": performance,
        "n_reference": report["n_reference"],
        "n_current": report["n_current"],
        "share_threshold": report["share_threshold"],
        "skipped_features": report.get("skipped", {}),
        "window": {k: v for k, v in window.items() if k != "needs_scoring"},
        "event_emitted": emitted,
    }


def _skipped(model: str, version: str | None, message: str, window: dict | None = None) -> Completed:
    run_logger().info("drift check of %s skipped: %s", model, message)
    result = {
        "model": model,
        "model_version": version,
        "drift_detected": False,
        "drift_share": 0.0,
        "prediction_drift": False,
        "features": {},
        "event_emitted": False,
        "skipped": True,
        "message": message,
        "window": {k: v for k, v in (window or {}).items() if k != "needs_scoring"},
    }
    return Completed(name=SKIPPED_STATE, message=message, data=result)
