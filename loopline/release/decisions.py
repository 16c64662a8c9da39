"""The paperwork of a decision: tags on the candidate version (`loopline.last_decision`, and when promoted
`loopline.promoted_at`, `loopline.promotion_reason`, `loopline.promotion_metrics`,
`loopline.packaging.model_card`) and one MLflow run per decision or evaluation, in the candidate's
experiment, holding its metrics, the evaluation JSON and the model card. Logging never fails the decision.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from loopline.cache import ComputeCache
from loopline.config import LifecycleConfig
from loopline.packaging.model_card import render_model_card
from loopline.packaging.registry import ensure_experiment, experiment_name
from loopline.release.champion import retry_locked, tag_version

log = logging.getLogger(__name__)
# (tracking uri, run id) -> experiment id: a run never changes experiment, so one get_run per process
_run_experiments = ComputeCache(256)


def summarize(evaluation: dict[str, Any]) -> dict[str, Any]:
    """What a history entry keeps of an evaluation (tags are small)."""
    ci = evaluation.get("ci") or {}
    return {
        "primary_metric": evaluation.get("primary_metric"),
        "candidate": evaluation.get("metrics"),
        "champion": evaluation.get("champion_metrics"),
        "ci": {k: ci.get(k) for k in ("estimate", "low", "high", "level")} if ci else None,
        "features_version": (evaluation.get("data") or {}).get("features_version"),
    }


def record_decision(
    client, cfg: LifecycleConfig, model: str, version: int, result: dict, tracking_uri: str
) -> None:
    """Version tags, and an MLflow run with the decision's metrics, the evaluation JSON and the model card.
    For promote(), which has read the model's state under its lock in this decision."""
    card = render_model_card(result)
    run_id = log_decision_run(client, cfg, model, result, card, tracking_uri)
    result["decision_run_id"] = run_id
    result["model_card_uri"] = f"runs:/{run_id}/model_card.md" if run_id else None
    tags: dict[str, Any] = {
        "loopline.last_decision": {
            "time": result["decided_at"],
            "promoted": result["promoted"],
            "reason": result["reason"],
            "champion_version": result["champion_version"],
            "run_id": run_id,
        },
    }
    if result["promoted"]:
        tags.update(
            {
                "loopline.promoted_at": result["decided_at"],
                "loopline.promotion_reason": result["reason"],
                "loopline.promotion_metrics": summarize(result),
            }
        )
    if result["model_card_uri"]:
        tags["loopline.model_card"] = result["model_card_uri"]
    tag_version(client, model, version, tags, state_read=True)


def log_decision_run(
    client, cfg: LifecycleConfig, model: str, result: dict, card: str, tracking_uri: str
) -> str | None:
    """One MLflow run per decision, in the candidate's experiment. Never fails the promotion it records."""
    try:
        experiment_id = _experiment_for(client, cfg, model, result, tracking_uri)
        verdict = (
            "promoted"
            if result.get("promoted", False)
            else ("rejected" if "promoted" in result else "evaluated")
        )
        run = retry_locked(
            client.create_run,
            experiment_id,
            run_name=f"{'promote' if 'promoted' in result else 'evaluate'}-{model}-v{result['candidate_version']}",
            tags={
                "loopline.kind": "promotion" if "promoted" in result else "evaluation",
                "loopline.model_name": model,
                "loopline.candidate_version": str(result["candidate_version"]),
                "loopline.decision": verdict,
                "loopline.reason": str(result.get("reason") or "")[:5000],
            },
        )
        run_id = run.info.run_id
        from mlflow.entities import Metric, Param

        ts = int(time.time() * 1000)
        metrics = [
            Metric(f"candidate.{k}", float(v), ts, 0)
            for k, v in (result.get("metrics") or {}).items()
            if _finite(v)
        ]
        metrics += [
            Metric(f"champion.{k}", float(v), ts, 0)
            for k, v in (result.get("champion_metrics") or {}).items()
            if _finite(v)
        ]
        ci = result.get("ci") or {}
        metrics += [
            Metric(f"ci.{k}", float(ci[k]), ts, 0) for k in ("estimate", "low", "high") if _finite(ci.get(k))
        ]
        if "promoted" in result:
            metrics.append(Metric("promoted", float(result["promoted"]), ts, 0))
        params = [
            Param("candidate_version", str(result["candidate_version"])),
            Param("compared_with", str(result.get("compared_with"))),
        ]
        params += [
            Param(f"evaluation.{k}", json.dumps(v)) for k, v in cfg.evaluation.model_dump(mode="json").items()
        ]
        params.append(Param("features_version", str((result.get("data") or {}).get("features_version"))))
        retry_locked(client.log_batch, run_id, metrics=metrics, params=params)
        with tempfile.TemporaryDirectory(prefix="loopline-decision-") as tmp:  # both files in one upload
            (Path(tmp) / "model_card.md").write_text(card, encoding="utf-8")
            (Path(tmp) / "evaluation.json").write_text(
                json.dumps(result, indent=2, default=str), encoding="utf-8"
            )
            retry_locked(client.log_artifacts, run_id, tmp)
        retry_locked(client.set_terminated, run_id)
        return run_id
    except Exception as exc:  # the decision stands without its paperwork
        log.warning(
            "could not log the decision run of %s v%s: %s", model, result.get("candidate_version"), exc
        )
        return None


def _experiment_for(client, cfg, model, result, tracking_uri) -> str:
    run_id = (result.get("data") or {}).get("candidate_run_id")
    if run_id:
        key = (tracking_uri, run_id)
        return _run_experiments.get_or_compute(key, lambda: client.get_run(run_id).info.experiment_id)
    return ensure_experiment(client, experiment_name(model), cfg.home, tracking_uri)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
