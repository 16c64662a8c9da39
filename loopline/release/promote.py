"""The promotion gate: infra validation, evaluation against the champion, a decision with a reason, the
alias move, and rollback. No Prefect here (tasks/promotion.py adds the concurrency limit, events, artifacts).

    promote(cfg, model, version)  ->  infra validation (fresh process; a failure refuses with the error)
                                  ->  under the model's lock: read @champion, evaluate both on the same rows,
                                      decide, check-and-set the alias, record the move
                                  ->  model card + metrics as an MLflow run; tags on the version
    rollback(model)               ->  @champion back to the previous champion, repeatable down the chain

The gate, in order: not already champion; min_score (absolute bar); then, when a champion exists:
improvement >= min_improvement (and > 0 unless min_improvement < 0: a tie keeps the champion), with
require_ci the bootstrap interval's lower bound must clear the same bar, and no judged slice may lose more
than max_slice_regression. The first model is promoted when it clears min_score.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from loopline.config import EvaluationConfig, LifecycleConfig, default_home
from loopline.errors import LooplineError, ModelError
from loopline.packaging.model_card import render_model_card
from loopline.release.champion import (
    CHAMPION,
    PREVIOUS,
    PromotionConflict,
    get_alias,
    move_champion,
    now_iso,
    promotion_lock,
    read_history,
    read_state,
    reconcile,
    retry_locked,
    tag_version,
)
from loopline.release.evaluate import (
    _Cache,
    evaluate_versions,
    model_name_for,
    newest_version,
    read_test_set,
    registry_client,
    tracking_uri_for,
    version_info,
)
from loopline.release.metrics import HIGHER_IS_BETTER, clears_floor, improvement_bounds
from loopline.storage.lake import Lake

log = logging.getLogger(__name__)

CAS_ATTEMPTS = 3
_infra_passed = _Cache(
    64
)  # (tracking uri, artifact source, python) -> a passed validation: same files, same result


@dataclass
class Decision:
    promote: bool
    reason: str
    checks: list[dict[str, Any]] = field(default_factory=list)


def _check(name: str, passed: bool | None, detail: str) -> dict[str, Any]:
    return {"name": name, "passed": None if passed is None else bool(passed), "detail": detail}


def _n(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def _clears(value: float, bar: float) -> bool:
    """The improvement rule: at least `bar`, and strictly positive unless a lateral move is allowed (bar < 0)."""
    return value >= bar and (value > 0 or bar < 0)


def decide(ecfg: EvaluationConfig, evaluation: dict[str, Any]) -> Decision:
    """The gate. Every check is reported (passed True/False, or None when it does not apply)."""
    primary = evaluation["primary_metric"]
    value = evaluation["metrics"][primary]
    better = ">=" if HIGHER_IS_BETTER[primary] else "<="
    cand, champ = evaluation["candidate_version"], evaluation["champion_version"]
    champ_metrics = evaluation.get("champion_metrics")
    checks = []

    already = champ is not None and champ == cand
    checks.append(
        _check("not already champion", not already, f"@champion is v{champ}" if champ else "no champion yet")
    )
    if ecfg.min_score is None:
        checks.append(_check("min_score", None, "not set"))
    else:
        ok = clears_floor(primary, value, ecfg.min_score)
        checks.append(_check("min_score", ok, f"{primary} {_n(value)} {better} {ecfg.min_score} required"))

    if champ_metrics is None or already:
        why = (
            "nothing to compare with"
            if champ is None
            else (evaluation.get("champion_error") or "same version")
        )
        for name in ("min_improvement", "require_ci", "max_slice_regression"):
            checks.append(_check(name, None, why))
    else:
        gain, bar = evaluation["improvement"], ecfg.min_improvement
        verdict = f"{primary} {_n(value)} vs champion {_n(champ_metrics[primary])}: improvement {_n(gain)}"
        if gain == 0 and bar >= 0:
            verdict += " (a tie keeps the champion; a negative min_improvement allows a lateral move)"
        checks.append(_check("min_improvement", _clears(gain, bar), f"{verdict}, min_improvement {bar}"))
        ci = evaluation.get("ci")
        if ci is not None:
            low, high = improvement_bounds(ci)
            detail = f"{int(ci['level'] * 100)}% CI of the improvement [{_n(low)}, {_n(high)}]"
            checks.append(
                _check(
                    "require_ci",
                    _clears(low, bar) if ecfg.require_ci else None,
                    detail + ("" if ecfg.require_ci else " (not required)"),
                )
            )
        else:
            checks.append(_check("require_ci", None, "no interval"))
        checks.append(_slice_check(ecfg, evaluation))

    failed = [c for c in checks if c["passed"] is False]
    if failed:
        return Decision(False, f"{failed[0]['name']}: {failed[0]['detail']}", checks)
    if champ is None:
        reason = f"first model: no champion yet; {primary} {_n(value)}"
        if ecfg.min_score is not None:
            reason += f" clears min_score {ecfg.min_score}"
        return Decision(True, reason, checks)
    if champ_metrics is None:
        return Decision(
            True,
            f"the champion v{champ} cannot score the current data ({evaluation.get('champion_error')}); {primary} {_n(value)}",
            checks,
        )
    ci = evaluation.get("ci") or {}
    interval = f", CI [{_n(improvement_bounds(ci)[0])}, {_n(improvement_bounds(ci)[1])}]" if ci else ""
    return Decision(
        True,
        f"{primary} {_n(value)} vs champion v{champ} {_n(champ_metrics[primary])} "
        f"(improvement {_n(evaluation['improvement'])}{interval})",
        checks,
    )


def _slice_check(ecfg: EvaluationConfig, evaluation: dict[str, Any]) -> dict[str, Any]:
    judged = [s for s in evaluation.get("slices") or [] if s["judged"] and s.get("improvement") is not None]
    if ecfg.max_slice_regression is None:
        return _check("max_slice_regression", None, "not set")
    if not judged:
        return _check("max_slice_regression", None, f"no slice has {ecfg.min_slice_rows}+ rows")
    worst = min(judged, key=lambda s: s["improvement"])
    detail = (
        f"worst slice {worst['column']}={worst['value']} ({worst['rows']} rows): {evaluation['primary_metric']} "
        f"improvement {_n(worst['improvement'])}, allowed drop {ecfg.max_slice_regression}"
    )
    return _check("max_slice_regression", worst["improvement"] >= -ecfg.max_slice_regression, detail)


# -- infra validation -------------------------------------------------------------------------------


def run_infra_validation(
    cfg: LifecycleConfig, model: str, version: int, *, lake: Lake, tracking_uri: str
) -> dict[str, Any]:
    """Load + score the version in a fresh process on contract rows (real test rows plus edge rows)."""
    from loopline.data.contracts import load_contract
    from loopline.release.infra_validation import sample_rows, validate_infra

    client = registry_client(tracking_uri)
    info = version_info(client, model, version)
    real, contract = None, None
    if info["features_version"] is not None:
        try:
            test = read_test_set(lake, info["dataset"] or model_name_for(cfg), info["features_version"])
            real, contract = test.frame, test.contract
        except LooplineError as exc:
            log.info("infra validation of %s v%s uses synthetic rows only: %s", model, version, exc)
    contract = contract or load_contract(cfg.data.contract)
    rows = sample_rows(contract, real, cfg.evaluation.infra_sample_rows)
    key = (tracking_uri, info["source"], sys.executable, len(rows))

    def validate() -> dict[str, Any]:
        result = validate_infra(
            f"models:/{model}/{version}",
            rows,
            contract,
            tracking_uri=tracking_uri,
            timeout_s=cfg.evaluation.infra_timeout_seconds,
        )
        if not result["ok"]:
            raise _InfraFailed(result)
        return result

    try:
        return {**_infra_passed.get_or_compute(key, validate)}
    except _InfraFailed as failed:  # failures are not cached: a timeout may pass next time
        return failed.result


class _InfraFailed(Exception):
    def __init__(self, result: dict[str, Any]):
        super().__init__(result.get("reason"))
        self.result = result


# -- promote ----------------------------------------------------------------------------------------


def promote(
    cfg: LifecycleConfig,
    model: str | None = None,
    version: int | None = None,
    *,
    lake: Lake,
    tracking_uri: str | None = None,
    infra_validate: bool = True,
) -> dict[str, Any]:
    """Decide whether `version` (default: the newest) replaces `@champion`, and move the aliases if so.

    Returns: promoted, candidate_version, champion_version and previous_version (after the decision),
    reason, metrics, champion_metrics, ci, checks, slices, data, infra_validation, timings_s, and the
    MLflow run holding the model card."""
    started = time.perf_counter()
    tracking_uri = tracking_uri_for(cfg, tracking_uri)
    client = registry_client(tracking_uri)
    model = model or model_name_for(cfg)
    version = int(version) if version is not None else newest_version(client, model)
    version_info(client, model, version)  # ModelError now when the version does not exist

    # Infra validation first, outside the lock: it depends on the candidate alone and takes seconds
    infra = (
        run_infra_validation(cfg, model, version, lake=lake, tracking_uri=tracking_uri)
        if infra_validate
        else {"ok": True, "skipped": True}
    )
    t_infra = time.perf_counter()

    evaluation: dict[str, Any] = {}
    entry = None
    t_decided = t_moved = None
    with promotion_lock(cfg.home, model, cfg.evaluation.lock_timeout_seconds):
        for _attempt in range(CAS_ATTEMPTS):
            state = reconcile(client, model, read_state(client, model))
            champion = state.champion
            if not infra["ok"]:
                decision = Decision(
                    False,
                    f"infra validation failed: {infra['reason']}",
                    [_check("infra validation", False, infra["reason"])],
                )
                t_decided = time.perf_counter()
                break
            evaluation = evaluate_versions(
                cfg,
                model,
                version,
                lake=lake,
                tracking_uri=tracking_uri,
                champion_version=None if champion == version else champion,
            )
            evaluation["champion_version"] = champion  # the gate sees "already champion" too
            decision = decide(cfg.evaluation, evaluation)
            decision.checks.insert(
                0,
                _check(
                    "infra validation",
                    True if not infra.get("skipped") else None,
                    "passed" if not infra.get("skipped") else "skipped",
                ),
            )
            t_decided = time.perf_counter()
            if not decision.promote:
                break
            try:
                entry = move_champion(
                    client,
                    model,
                    version,
                    expected=champion,
                    action="promote",
                    reason=decision.reason,
                    metrics=_summary(evaluation),
                )
                t_moved = time.perf_counter()
                break
            except PromotionConflict as exc:  # a writer outside this lock moved the alias: decide again
                log.warning("%s", exc)
        else:
            raise PromotionConflict(f"@champion of {model!r} kept moving during {CAS_ATTEMPTS} decisions")

        result = _result(model, version, decision, evaluation, infra, client)
        result["history_seq"] = entry["seq"] if entry else None
        result["timings_s"] = {
            "infra_validation": round(t_infra - started, 4),
            "evaluate": (evaluation.get("timings_s") or {}).get("total"),
            "decision_to_alias_moved": round(t_moved - t_decided, 4) if t_moved else None,
        }
        _record_decision(client, cfg, model, version, result, tracking_uri)
    result["timings_s"]["total"] = round(time.perf_counter() - started, 4)
    return result


def _summary(evaluation: dict[str, Any]) -> dict[str, Any]:
    """What a history entry keeps of an evaluation (tags are small)."""
    ci = evaluation.get("ci") or {}
    return {
        "primary_metric": evaluation.get("primary_metric"),
        "candidate": evaluation.get("metrics"),
        "champion": evaluation.get("champion_metrics"),
        "ci": {k: ci.get(k) for k in ("estimate", "low", "high", "level")} if ci else None,
        "features_version": (evaluation.get("data") or {}).get("features_version"),
    }


def _result(model, version, decision: Decision, evaluation, infra, client) -> dict[str, Any]:
    champion_after = get_alias(client, model, CHAMPION)
    previous_after = get_alias(client, model, PREVIOUS)
    return {
        "model": model,
        "promoted": decision.promote,
        "candidate_version": version,
        "champion_version": champion_after,
        "previous_version": previous_after,
        "compared_with": evaluation.get("champion_version") if evaluation.get("champion_metrics") else None,
        "reason": decision.reason,
        "primary_metric": evaluation.get("primary_metric"),
        "metrics": evaluation.get("metrics"),
        "champion_metrics": evaluation.get("champion_metrics"),
        "improvement": evaluation.get("improvement"),
        "ci": evaluation.get("ci"),
        "checks": decision.checks,
        "slices": evaluation.get("slices") or [],
        "dataset": evaluation.get("dataset"),
        "task": evaluation.get("task"),
        "rows": evaluation.get("rows"),
        "contract": evaluation.get("contract"),
        "data": evaluation.get("data") or {},
        "champion_error": evaluation.get("champion_error"),
        "infra_validation": infra,
        "decided_at": now_iso(),
    }


def _record_decision(
    client, cfg: LifecycleConfig, model: str, version: int, result: dict, tracking_uri: str
) -> None:
    """Version tags, and an MLflow run with the decision's metrics, the evaluation JSON and the model card."""
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
                "loopline.promotion_metrics": _summary(result),
            }
        )
    if result["model_card_uri"]:
        tags["loopline.packaging.model_card"] = result["model_card_uri"]
    tag_version(client, model, version, tags)


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
        retry_locked(client.log_text, run_id, card, "model_card.md")
        retry_locked(client.log_text, run_id, json.dumps(result, indent=2, default=str), "evaluation.json")
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
        return client.get_run(run_id).info.experiment_id
    from loopline.packaging.registry import ensure_experiment, experiment_name

    return ensure_experiment(client, experiment_name(model), cfg.home, tracking_uri)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


# -- evaluate only (the `loopline evaluate` command) --------------------------------------------------


def evaluate(
    cfg: LifecycleConfig,
    model: str | None = None,
    version: int | None = None,
    *,
    lake: Lake,
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """Evaluate against the current champion without deciding or moving anything; logs the card to MLflow."""
    tracking_uri = tracking_uri_for(cfg, tracking_uri)
    result = evaluate_versions(cfg, model, version, lake=lake, tracking_uri=tracking_uri)
    champion = result["champion_version"]
    result["compared_with"] = champion if result.get("champion_metrics") else None
    if champion is not None and champion == result["candidate_version"]:
        result["note"] = "the candidate is the champion: compared with itself"
    client = registry_client(tracking_uri)
    run_id = log_decision_run(client, cfg, result["model"], result, render_model_card(result), tracking_uri)
    result["decision_run_id"] = run_id
    result["model_card_uri"] = f"runs:/{run_id}/model_card.md" if run_id else None
    return result


# -- rollback ---------------------------------------------------------------------------------------


def rollback(
    model: str,
    *,
    tracking_uri: str | None = None,
    reason: str = "manual",
    home: str | None = None,
    lock_timeout_s: float = 900.0,
) -> dict[str, Any]:
    """Move `@champion` back to the previous champion; `@previous` to the one before (repeatable).

    The hook serving and drift call for an automatic rollback. ModelError when there is nothing to go back to."""
    home = home or default_home()
    tracking_uri = tracking_uri or tracking_uri_for(None, None)
    client = registry_client(tracking_uri)
    started = time.perf_counter()
    with promotion_lock(home, model, lock_timeout_s):
        state = reconcile(client, model, read_state(client, model))
        if state.champion is None:
            raise ModelError(f"model {model!r} has no @champion to roll back")
        if len(state.stack) < 2:
            raise ModelError(
                f"model {model!r} has no previous champion to roll back to (v{state.champion} is the first)"
            )
        target = state.stack[-2]
        entry = move_champion(
            client, model, target, expected=state.champion, action="rollback", reason=reason, pop=True
        )
        tag_version(
            client,
            model,
            state.champion,
            {"loopline.rolled_back_at": entry["time"], "loopline.rolled_back_reason": reason},
        )
    return {
        "model": model,
        "champion_version": entry["champion"],
        "previous_version": entry["previous"],
        "rolled_back_version": state.champion,
        "reason": reason,
        "history_seq": entry["seq"],
        "seconds": round(time.perf_counter() - started, 4),
    }


def promotion_history(model: str, *, tracking_uri: str | None = None) -> list[dict[str, Any]]:
    """Every recorded move of `@champion`, oldest first."""
    return read_history(registry_client(tracking_uri or tracking_uri_for(None, None)), model)
