"""Tasks of a canary rollout: start, measure a step, ramp, abort, complete; events and artifacts.

Each task does its registry write in the core (loopline/release/rollout.py) and emits its event only after
that write: `loopline.model.canary.started` / `.ramped` / `.aborted` / `.completed`, resource
`loopline.model.M`, payload version, weight, evidence. Abort and completion also wait (bounded) until every
replica serves what the registry now says, so "aborted" means no replica routes to the challenger any more.
Tasks here keep no cache (cache_policy NONE): every measurement must be a fresh one.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from loopline.config import LifecycleConfig
from loopline.packaging.registry import registry_client, tracking_uri_for
from loopline.release import canary_analysis as ca
from loopline.release import rollout
from tasks.common import emit, lake_for, run_logger, slug

FLEET_POLL_SECONDS = 0.2


def serving_urls(cfg: LifecycleConfig, model: str) -> list[str]:
    """rollout.serving_urls, else the model's servers that answer (loopline.release.deploy.known_servers)."""
    from loopline.release.deploy import known_servers

    urls = cfg.rollout.serving_urls or [s.url for s in known_servers(cfg.home, model)]
    if not urls:
        raise rollout.RolloutError(
            f"no server of model {model!r} answers, so no live traffic can judge a canary: start one "
            f"(`loopline serve --model {model}`) or list them in rollout.serving_urls"
        )
    return urls


def _client(cfg: LifecycleConfig):
    return registry_client(tracking_uri_for(cfg, None))


def _event(name: str, model: str, payload: dict[str, Any]) -> bool:
    return emit(f"loopline.model.canary.{name}", f"loopline.model.{model}", payload)


@task(name="canary-gate", task_run_name="gate {model} v{version}", cache_policy=NONE)
def gate_candidate(cfg: LifecycleConfig, model: str, version: int | None) -> dict[str, Any]:
    """The promotion gate with nothing moved: a candidate that passes becomes the challenger."""
    from loopline.release.approval import preview_gate

    preview = preview_gate(cfg, model, version, lake=lake_for(cfg))
    run_logger().info("%s v%s offline gate: %s", model, preview["candidate_version"], preview["reason"])
    return preview


@task(name="canary-start", task_run_name="canary start {model} v{version}", cache_policy=NONE)
def start_canary(cfg: LifecycleConfig, model: str, version: int, mode: str) -> dict[str, Any]:
    """@challenger -> version at the first step; `loopline.model.canary.started`."""
    started = rollout.start(_client(cfg), cfg, model, version, mode)
    started["steps"] = rollout.weights(cfg.rollout, mode)
    started["event_emitted"] = _event("started", model, dict(started))
    run_logger().info("%s v%s: %s rollout started at weight %s", model, version, mode, started["weight"])
    return started


@task(name="canary-scrape", cache_policy=NONE, retries=2, retry_delay_seconds=[1, 3])
def scrape_fleet(urls: list[str]) -> dict:
    """The summed counters of every replica (a baseline for the windows that follow)."""
    return ca.scrape(urls)


@task(name="canary-measure", task_run_name="canary measure {model} step {step}", cache_policy=NONE)
def measure_step(
    cfg: LifecycleConfig,
    model: str,
    *,
    champion: int,
    version: int,
    mode: str,
    step: int,
    urls: list[str],
    rollout_baseline: dict,
    step_baseline: dict,
    rollout_since: datetime,
    step_since: datetime,
    step_started: float,
) -> dict[str, Any]:
    """One measurement of the step and the verdict on it (hold, ramp, abort, complete)."""
    now = ca.scrape(urls)
    role = ("shadow",) if mode == "shadow" else ("challenger",)
    champ = ca.side(now, rollout_baseline, str(champion), ("champion",))
    chall = ca.side(now, step_baseline, str(version), role)
    preds_a = preds_b = None
    if cfg.rollout.prediction_shift_threshold is not None and cfg.serving.inference_log:
        lake = lake_for(cfg)
        preds_a = ca.read_predictions(lake, model, str(champion), ("champion",), rollout_since)
        preds_b = ca.read_predictions(lake, model, str(version), role, step_since)
    live = None
    if cfg.serving.inference_log:  # labels join the inference log: without it there is nothing to judge
        live = _live_metric(cfg, model, str(champion), str(version), role, rollout_since, step_since)
    analysis = ca.analyse(
        cfg.rollout,
        champion=champ,
        challenger=chall,
        champion_predictions=preds_a,
        challenger_predictions=preds_b,
        live_metric=live,
    )
    steps = rollout.weights(cfg.rollout, mode)
    elapsed = time.time() - step_started
    verdict = rollout.decide(
        cfg.rollout, step=step, n_steps=len(steps), step_seconds=elapsed, analysis=analysis
    )
    return {
        "step": step,
        "weight": steps[step],
        "seconds": round(elapsed, 3),
        "action": verdict.action,
        "reason": verdict.reason,
        **analysis,
    }


def _live_metric(cfg: LifecycleConfig, model: str, champion: str, version: str, roles, since, step_since):
    """The labels check (canary_analysis.live_metric_check) on the primary metric, or None before any label
    arrived; a model whose contract the lake does not know is reported, not guessed."""
    from loopline.errors import LooplineError
    from loopline.release.metrics import primary_metric_for
    from tasks.feedback import model_contract

    lake = lake_for(cfg)
    champ_rows, chall_rows = ca.read_labelled(lake, model, champion, version, roles, since, step_since)
    if champ_rows.empty and chall_rows.empty:
        return None
    try:
        contract = model_contract(cfg, model)
    except LooplineError as exc:
        return ca.check("live metric", None, f"labels but no contract to read them with: {exc}")
    metric = primary_metric_for(contract.task, cfg.evaluation.primary_metric)
    if contract.task == "multiclass":
        metric = "accuracy"  # the log keeps the predicted class, not the probabilities (monitoring.live)
    ev = cfg.evaluation
    return ca.live_metric_check(
        metric, contract, champ_rows, chall_rows, samples=ev.bootstrap_samples, seed=ev.seed
    )


@task(name="canary-ramp", task_run_name="canary ramp {model} v{version} to step {step}", cache_policy=NONE)
def ramp_canary(
    cfg: LifecycleConfig, model: str, version: int, mode: str, step: int, evidence: dict
) -> dict[str, Any]:
    """The next step's weight to every replica; `loopline.model.canary.ramped`."""
    weight = rollout.weights(cfg.rollout, mode)[step]
    tag = rollout.publish(_client(cfg), model, version, mode=mode, step=step, weight=weight)
    payload = {"model": model, "version": version, "weight": weight, "step": step, "evidence": evidence}
    tag["event_emitted"] = _event("ramped", model, payload)
    run_logger().info("%s v%s ramped to %.0f%% (%s)", model, version, weight * 100, evidence.get("reason"))
    return tag


@task(name="canary-abort", task_run_name="canary abort {model} v{version}", cache_policy=NONE)
def abort_canary(
    cfg: LifecycleConfig, model: str, version: int, champion: int, urls: list[str], evidence: dict
) -> dict[str, Any]:
    """Withdraw the challenger; wait until no replica serves it; artifact + `loopline.model.canary.aborted`."""
    reason = evidence["reason"]
    rollout.withdraw(_client(cfg), model, version, action=rollout.ABORT, reason=reason)
    fleet = _wait_fleet(urls, cfg.rollout.withdraw_timeout_seconds, lambda r: r["challenger"] != str(version))
    result = {
        "model": model,
        "version": version,
        "champion_version": champion,
        "action": rollout.ABORT,
        "reason": reason,
        "weight": evidence.get("weight"),
        "evidence": evidence,
        "fleet": fleet,
    }
    _artifact(model, result)
    result["event_emitted"] = _event("aborted", model, result)
    run_logger().warning("%s v%s aborted: %s", model, version, reason)
    return result


@task(name="canary-complete", task_run_name="canary complete {model} v{version}", cache_policy=NONE)
def complete_canary(
    cfg: LifecycleConfig, model: str, version: int, champion: int, urls: list[str], evidence: dict
) -> dict[str, Any]:
    """Promote the challenger (@champion/@previous move, @challenger cleared); wait for the fleet;
    artifact + `loopline.model.canary.completed` and `loopline.model.promoted`."""
    reason = f"canary: {evidence['reason']}"
    entry = rollout.complete(
        _client(cfg),
        cfg,
        model,
        version,
        expected_champion=champion,
        reason=reason,
        metrics={"canary": {k: evidence.get(k) for k in ("champion", "challenger")}},
    )
    fleet = _wait_fleet(
        urls,
        cfg.rollout.withdraw_timeout_seconds,
        lambda r: r["champion"] == str(version) and r["challenger"] is None,
    )
    result = {
        "model": model,
        "version": version,
        "champion_version": entry["champion"],
        "previous_version": entry["previous"],
        "action": rollout.COMPLETE,
        "reason": reason,
        "weight": evidence.get("weight"),
        "evidence": evidence,
        "history_seq": entry["seq"],
        "fleet": fleet,
    }
    _artifact(model, result)
    result["event_emitted"] = _event("completed", model, result)
    emit(
        "loopline.model.promoted",
        f"loopline.model.{model}",
        {k: result[k] for k in ("model", "version", "champion_version", "previous_version", "reason")},
    )
    run_logger().info("%s v%s completed its canary and is @champion", model, version)
    return result


def _wait_fleet(urls: list[str], timeout_s: float, done) -> dict[str, Any]:
    """Poll every replica's /version until `done` holds for all of them (bounded); what they serve then."""
    deadline = time.monotonic() + timeout_s
    started = time.monotonic()
    while True:
        try:
            replicas = ca.fleet(urls)
        except OSError as exc:
            replicas = [{"error": str(exc)}]
        converged = all("error" not in r and done(r) for r in replicas)
        if converged or time.monotonic() > deadline:
            return {
                "converged": converged,
                "seconds": round(time.monotonic() - started, 3),
                "replicas": replicas,
            }
        time.sleep(FLEET_POLL_SECONDS)


def _artifact(model: str, result: dict[str, Any]) -> None:
    evidence = result["evidence"]
    a, b = evidence.get("champion") or {}, evidence.get("challenger") or {}
    lines = [
        f"# Canary of `{model}` v{result['version']}: **{result['action']}**",
        "",
        f"{result['reason']}",
        "",
        f"Step {evidence.get('step')} at {100 * (result.get('weight') or 0):.0f}% of traffic, "
        f"{evidence.get('seconds')} s; at {datetime.now(UTC).isoformat(timespec='seconds')}.",
        "",
        "| | requests | errors | error rate | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in (("champion", a), ("challenger", b)):
        lines.append(
            f"| {name} | {s.get('requests')} | {s.get('errors')} | {s.get('error_rate')} | "
            f"{s.get('p50_ms')} | {s.get('p99_ms')} |"
        )
    lines += ["", "| check | passed | detail |", "|---|---|---|"]
    for c in evidence.get("checks") or []:
        lines.append(f"| {c['name']} | {c['passed']} | {c['detail']} |")
    create_markdown_artifact(
        key=f"canary-{slug(model)}",
        markdown="\n".join(lines),
        description=f"canary of {model} v{result['version']}: {result['action']}",
    )
