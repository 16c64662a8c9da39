"""Promotion: infra validation, evaluation against the champion, the gate, the alias move, the record. No
Prefect here (tasks/promotion.py adds the concurrency limit, events, artifacts).

    promote(cfg, model, version)  ->  the loader gate (loopline.packaging.safe_load: a model that needs
                                      unpickling or code from the artifact is refused, nothing loaded),
                                      once per version: infra validation and both scorings load on its
                                      verdict (GateVerdicts, scoped to this promotion)
                                  ->  infra validation (the model server's loader in a fork of a warm
                                      template process; a failure refuses with the error), started in the
                                      background: it overlaps the evaluation below
                                  ->  under the model's lock: read @champion, evaluate both on the same rows,
                                      wait for the infra verdict, decide (loopline.release.gate),
                                      check-and-set the alias, record the move
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
from concurrent.futures import Future
from typing import Any

from loopline.cache import ComputeCache
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
from loopline.packaging.safe_load import GateVerdicts, ModelRefused
from loopline.release.background import in_background
from loopline.release.champion import (
    CHAMPION,
    PromotionConflict,
    move_champion,
    now_iso,
    promotion_lock,
    read_aliases,
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
# promote()'s infra validation runs beside its evaluation: its child process takes the CPU the evaluation
# leaves (a niceness of 10 gets ~1/10 of a contended core), so the evaluation, the longer of the two,
# is not slowed by it
BACKGROUND_INFRA_NICE = 10
_infra_passed = ComputeCache(
    64
)  # (tracking uri, artifact source, python) -> a passed validation: same files, same result


# -- infra validation -------------------------------------------------------------------------------


def run_infra_validation(
    cfg: LifecycleConfig,
    model: str,
    version: int,
    *,
    lake: Lake,
    tracking_uri: str,
    info: dict[str, Any] | None = None,
    verdicts: GateVerdicts | None = None,
    nice: int = 0,
) -> dict[str, Any]:
    """Load + score the version as the model server does, in a fork of the warm validation template
    (loopline.release.infra_template), on contract rows (real test rows plus edge rows). `info`: the
    version's `version_info`, when the caller has read it already; `verdicts`: the loader gate's verdicts of
    the caller's promotion; `nice`: the validation process's added niceness."""
    from loopline.data.contract_registry import resolve_contract
    from loopline.release.infra_validation import sample_rows, validate_infra

    info = info or version_info(registry_client(tracking_uri), model, version)
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
            verdicts=verdicts,
            nice=nice,
        )
        if not result["ok"]:
            raise _InfraFailed(result)
        return result

    try:
        return {**_infra_passed.get_or_compute(key, validate)}
    except _InfraFailed as failed:  # failures are not cached: a timeout may pass next time
        return failed.result


def _refusal(verdicts: GateVerdicts, model: str, version: int) -> str | None:
    """Why the loader gate refuses the candidate (it would need unpickling or code from the artifact), or
    None. Checked before anything of the candidate is loaded, here or in the infra-validation process; the
    verdict is the one they load on (one read of the version's MLmodel per promotion)."""
    try:
        verdicts.gate(model, version)
    except ModelRefused as exc:
        return str(exc)
    return None


def _prefetch(cfg, client, model, version, info, lake, tracking_uri, *, scores: bool, verdicts=None) -> None:
    """Warm loopline.release.scoring's caches in threads while this thread does registry round trips (the
    loader gate, the state under the lock) and infra validation runs in its own process: the test rows
    (they depend on the version's run tags alone), and with `scores` (only once the loader gate has passed
    the candidate) the candidate's and the current champion's scores. Keyed by version and test split: if
    @champion moves before the lock is taken, the evaluation scores the new one; a failure here is left for
    the evaluation to meet and report."""
    if info["features_version"] is None:
        return

    def test_rows():
        return read_test_set(lake, info["dataset"] or model_name_for(cfg), info["features_version"])

    def candidate() -> None:
        score_version(model, int(version), test_rows(), tracking_uri=tracking_uri, verdicts=verdicts)

    def champion() -> None:
        current = alias_version(client, model, CHAMPION)
        if current is not None and int(current) != int(version):
            score_version(model, int(current), test_rows(), tracking_uri=tracking_uri, verdicts=verdicts)

    work_list = (("candidate", candidate), ("champion", champion)) if scores else (("test-rows", test_rows),)
    for name, work in work_list:

        def run(work=work, name=name) -> None:
            try:
                work()
            except Exception as exc:  # the evaluation under the lock meets it again and decides
                log.debug("prefetching %s of %s failed: %s", name, model, exc)

        threading.Thread(target=run, name=f"prefetch-{name}-{model}", daemon=True).start()


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
    verdicts = GateVerdicts(client, tracking_uri)  # the gate reads each version once in this promotion

    # The loader gate first, synchronously: a refused candidate is never loaded, here or anywhere. Then infra
    # validation, in the background: it runs in its own process (this thread only waits on a pipe), so it
    # overlaps the evaluation instead of preceding it. The evaluation may load the candidate here before
    # the verdict is in; the gate has passed, so that runs no pickle and no code from the artifact. The
    # verdict still decides: a failed validation refuses the promotion whatever the evaluation found (its
    # metrics, or its error, are dropped) and @champion stays where it is.
    if infra_validate:
        _prefetch(cfg, client, model, version, info, lake, tracking_uri, scores=False)
    refusal = _refusal(verdicts, model, version)
    infra_job: Future | None = None
    infra_timing: dict[str, float] = {}
    if refusal is not None:
        infra = {"ok": False, "refused": True, "reason": refusal, "loader": None, "rows": 0}
    elif infra_validate:

        def validate() -> dict[str, Any]:
            t0 = time.perf_counter()
            try:
                return run_infra_validation(
                    cfg,
                    model,
                    version,
                    lake=lake,
                    tracking_uri=tracking_uri,
                    info=info,
                    verdicts=verdicts,
                    nice=BACKGROUND_INFRA_NICE,
                )
            finally:
                infra_timing["s"] = time.perf_counter() - t0

        infra_job = in_background(validate, f"infra-validation-{model}")
        infra = {"ok": True, "pending": True}  # until the verdict, awaited before any decision
        _prefetch(cfg, client, model, version, info, lake, tracking_uri, scores=True, verdicts=verdicts)
    else:
        infra = {"ok": True, "skipped": True}

    evaluation: dict[str, Any] = {}
    entry = None
    t_decided = t_moved = None
    infra_wait_s = 0.0
    with promotion_lock(cfg.home, model, cfg.evaluation.lock_timeout_seconds):
        for _attempt in range(CAS_ATTEMPTS):
            state = reconcile(client, model, read_state(client, model))
            champion = state.champion
            evaluation_error: Exception | None = None
            if infra_job is not None and infra_job.done():  # a failure already in: skip the evaluation
                infra = infra_job.result()
            if infra["ok"]:
                try:
                    evaluation = evaluate_versions(
                        cfg,
                        model,
                        version,
                        lake=lake,
                        tracking_uri=tracking_uri,
                        champion_version=None if champion == version else champion,
                        candidate_info=info,
                        verdicts=verdicts,
                    )
                except Exception as exc:  # raised below unless infra validation refuses the candidate
                    evaluation, evaluation_error = {}, exc
            if infra.get("pending"):
                t_wait = time.perf_counter()
                infra = infra_job.result()
                infra_wait_s = time.perf_counter() - t_wait
            if not infra["ok"]:
                evaluation = {}
                what = "loader gate" if infra.get("refused") else "infra validation"
                decision = Decision(
                    False,
                    f"{'refused by the loader gate' if infra.get('refused') else 'infra validation failed'}: "
                    f"{infra['reason']}",
                    [check(what, False, infra["reason"])],
                )
                t_decided = time.perf_counter()
                break
            if evaluation_error is not None:
                raise evaluation_error
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

        # the aliases after the decision, as this decision left them under the lock: the moved ones, or
        # the ones read (and reconciled) before deciding; move_champion has re-read @champion after moving
        aliases = (version, entry["previous"]) if entry else (state.champion, state.previous)
        result = _result(model, version, decision, evaluation, infra, client, aliases)
        result["history_seq"] = entry["seq"] if entry else None
        result["timings_s"] = {
            # overlapped with the evaluation; what the decision waited for it after the evaluation is apart
            "infra_validation": round(infra_timing["s"], 4) if "s" in infra_timing else None,
            "infra_wait_after_evaluate": round(infra_wait_s, 4),
            "evaluate": (evaluation.get("timings_s") or {}).get("total"),
            "decision_to_alias_moved": round(t_moved - t_decided, 4) if t_moved else None,
        }
        kill_point("promote.before_record")  # the alias and the history moved; no version tags, no card yet
        record_decision(client, cfg, model, version, result, tracking_uri)
        kill_point("promote.after_record")
    result["timings_s"]["total"] = round(time.perf_counter() - started, 4)
    return result


def _result(model, version, decision: Decision, evaluation, infra, client, aliases=None) -> dict[str, Any]:
    """`aliases`: (@champion, @previous) after the decision when the caller knows them; else read."""
    champion_after, previous_after = aliases if aliases is not None else read_aliases(client, model)
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
