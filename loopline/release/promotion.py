"""Promotion: infra validation, evaluation against the champion, the gate, the alias move, the record. No
Prefect here (tasks/promotion.py adds the concurrency limit, events, artifacts).

    promote(cfg, model, version)  ->  the loader gate (loopline.packaging.safe_load: a model that needs
                                      unpickling or code from the artifact is refused, nothing loaded)
                                  ->  infra validation (the model server's loader in a fork of a warm
                                      template process; a failure refuses with the error)
                                  ->  under the model's lock: read @champion, evaluate both on the same rows,
                                      decide (loopline.release.gate), check-and-set the alias, record the move
                                  ->  model card + metrics as an MLflow run; tags on the version
                                      (loopline.release.decisions)
    evaluate(cfg, model, version) ->  the same evaluation and card, deciding and moving nothing

Rollback is loopline.release.rollbacks.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any

from loopline.config import LifecycleConfig
from loopline.errors import LooplineError
from loopline.faults import kill_point
from loopline.packaging.model_card import render_model_card
from loopline.packaging.registry import (
    alias_version,
    model_name_for,
    newest_version,
    registry_client,
    tracking_uri_for,
    version_info,
)
from loopline.release.cache import ComputeCache
from loopline.release.champion import (
    CHAMPION,
    PREVIOUS,
    PromotionConflict,
    get_alias,
    move_champion,
    now_iso,
    promotion_lock,
    read_state,
    reconcile,
)
from loopline.release.decisions import log_decision_run, record_decision, summarize
from loopline.release.gate import Decision, check, decide
from loopline.release.scoring import evaluate_versions, score_version
from loopline.release.testset import read_test_set
from loopline.storage.lake import Lake

log = logging.getLogger(__name__)

CAS_ATTEMPTS = 3
_infra_passed = ComputeCache(
    64
)  # (tracking uri, artifact source, python) -> a passed validation: same files, same result


# -- infra validation -------------------------------------------------------------------------------


def run_infra_validation(
    cfg: LifecycleConfig, model: str, version: int, *, lake: Lake, tracking_uri: str
) -> dict[str, Any]:
    """Load + score the version as the model server does, in a fork of the warm validation template
    (loopline.release.infra_template), on contract rows (real test rows plus edge rows)."""
    from loopline.data.contract_registry import resolve_contract
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
    # no test rows: the contract of the model's dataset, as the lake keeps it
    contract = contract or resolve_contract(lake, cfg.for_dataset(info["dataset"]).data)
    rows = sample_rows(contract, real, cfg.evaluation.infra_sample_rows)
    key = (tracking_uri, info["source"], sys.executable, len(rows), cfg.evaluation.infra_pyfunc_check)

    def validate() -> dict[str, Any]:
        result = validate_infra(
            f"models:/{model}/{version}",
            rows,
            contract,
            tracking_uri=tracking_uri,
            timeout_s=cfg.evaluation.infra_timeout_seconds,
            pyfunc=cfg.evaluation.infra_pyfunc_check,
        )
        if not result["ok"]:
            raise _InfraFailed(result)
        return result

    try:
        return {**_infra_passed.get_or_compute(key, validate)}
    except _InfraFailed as failed:  # failures are not cached: a timeout may pass next time
        return failed.result


def _refusal(client, model: str, version: int, tracking_uri: str) -> str | None:
    """Why the loader gate refuses the candidate (it would need unpickling or code from the artifact), or
    None. Checked before anything of the candidate is loaded, here or in the infra-validation process."""
    from loopline.packaging.safe_load import ModelRefused, check_version

    try:
        check_version(client, model, version, tracking_uri=tracking_uri)
    except ModelRefused as exc:
        return str(exc)
    return None


def _prefetch_champion(cfg, client, model, version, info, lake, tracking_uri) -> threading.Thread | None:
    """Score the current champion while the candidate is being validated (in its own process, so this
    thread has the caller's CPU to itself). Only a warm-up of loopline.release.scoring's cache, keyed by
    version and test split: if @champion moves before the lock is taken, the evaluation scores the new one;
    a failure here is left for the evaluation to meet and report. The candidate is never loaded here."""
    if info["features_version"] is None:
        return None

    def run() -> None:
        try:
            champion = alias_version(client, model, CHAMPION)
            if champion is None or int(champion) == int(version):
                return
            test = read_test_set(lake, info["dataset"] or model_name_for(cfg), info["features_version"])
            score_version(model, int(champion), test, tracking_uri=tracking_uri)
        except Exception as exc:  # the evaluation under the lock meets it again and decides
            log.debug("prefetching the champion's scores of %s failed: %s", model, exc)

    thread = threading.Thread(target=run, name=f"prefetch-champion-{model}", daemon=True)
    thread.start()
    return thread


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
    if infra_validate:  # its imports run while the gate and the test rows are read
        from loopline.release.infra_template import prestart

        prestart()
    tracking_uri = tracking_uri_for(cfg, tracking_uri)
    client = registry_client(tracking_uri)
    model = model or model_name_for(cfg)
    version = int(version) if version is not None else newest_version(client, model)
    info = version_info(client, model, version)  # ModelError now when the version does not exist

    # The loader gate, then infra validation, outside the lock: they depend on the candidate alone
    refusal = _refusal(client, model, version, tracking_uri)
    prefetch = None
    if refusal is not None:
        infra = {"ok": False, "refused": True, "reason": refusal, "loader": None, "rows": 0}
    elif infra_validate:
        prefetch = _prefetch_champion(cfg, client, model, version, info, lake, tracking_uri)
        infra = run_infra_validation(cfg, model, version, lake=lake, tracking_uri=tracking_uri)
    else:
        infra = {"ok": True, "skipped": True}
    t_infra = time.perf_counter()
    if prefetch is not None:
        prefetch.join()

    evaluation: dict[str, Any] = {}
    entry = None
    t_decided = t_moved = None
    with promotion_lock(cfg.home, model, cfg.evaluation.lock_timeout_seconds):
        for _attempt in range(CAS_ATTEMPTS):
            state = reconcile(client, model, read_state(client, model))
            champion = state.champion
            if not infra["ok"]:
                what = "loader gate" if infra.get("refused") else "infra validation"
                decision = Decision(
                    False,
                    f"{'refused by the loader gate' if infra.get('refused') else 'infra validation failed'}: "
                    f"{infra['reason']}",
                    [check(what, False, infra["reason"])],
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
                check(
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
                    metrics=summarize(evaluation),
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
        kill_point("promote.before_record")  # the alias and the history moved; no version tags, no card yet
        record_decision(client, cfg, model, version, result, tracking_uri)
        kill_point("promote.after_record")
    result["timings_s"]["total"] = round(time.perf_counter() - started, 4)
    return result


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
