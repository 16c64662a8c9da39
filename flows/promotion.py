"""Promotion flows: evaluate a version against the champion, promote it through the gate, roll back.

`loopline evaluate`, `loopline promote` and `loopline rollback` run these; the lifecycle and retrain flows
call `promotion_flow` after training.
"""

from __future__ import annotations

from prefect import flow

import flows.heartbeats  # noqa: F401  (flow runs end without waiting on their heartbeat thread)
from loopline.config import LifecycleConfig, resolve_config
from loopline.packaging.registry import model_name_for
from tasks.promotion import evaluate_model, promote_model, rollback_model


@flow(name="evaluate", log_prints=True)
def evaluation_flow(
    config: LifecycleConfig | None = None, model: str | None = None, version: int | None = None
) -> dict:
    """Score `version` (default: the newest) and @champion on the same held-out rows; nothing moves."""
    cfg = resolve_config(config)
    return evaluate_model(cfg, model or model_name_for(cfg), version)


@flow(name="promotion", log_prints=True)
def promotion_flow(
    config: LifecycleConfig | None = None, model: str | None = None, version: int | None = None
) -> dict:
    """Infra validation -> evaluation against @champion -> gate -> alias move, one promotion per model at a time."""
    cfg = resolve_config(config)
    model = model or model_name_for(cfg)
    # Approve: with rollout.require_approval a person decides first, outside the promotion slot
    if cfg.rollout.require_approval:
        refused = _await_approval(cfg, model, version)
        if refused is not None:
            return refused
    # Roll out: with rollout.mode canary/shadow the candidate goes live as @challenger, judged on traffic
    if cfg.rollout.mode != "direct":
        return _roll_out(cfg, model, version)
    # Gate and move: the model card and the `loopline.model.promoted` event come with the decision
    return promote_model(cfg, model, version)


def _await_approval(cfg: LifecycleConfig, model: str, version: int | None) -> dict | None:
    """Pause this run for an ApprovalInput (a timeout rejects); the decision is recorded either way.
    Returns None when approved (the promotion goes on and runs the gate again), else the outcome."""
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import pause_flow_run

    from tasks.approval import ApprovalInput, decision_of, record_decision, request_approval

    preview = request_approval(cfg, model, version)
    if not preview["promoted"]:  # the gate refuses: nobody needs to decide; record the refusal as always
        return promote_model(cfg, model, preview["candidate_version"])
    timeout_s = max(1, int(cfg.rollout.approval_timeout_hours * 3600))
    try:
        answer = pause_flow_run(
            wait_for_input=ApprovalInput, timeout=timeout_s, poll_interval=min(10, max(1, timeout_s // 60))
        )
    except FlowPauseTimeout:
        answer = None
    approval = record_decision(cfg, model, preview["candidate_version"], preview, decision_of(answer))
    if approval["approved"]:
        return None
    return {
        **preview,
        "promoted": False,
        "reason": f"not approved: {approval['comment']}",
        "approval": approval,
    }


def _roll_out(cfg: LifecycleConfig, model: str, version: int | None) -> dict:
    """The gate (nothing moves), then the canary-analysis flow on live traffic."""
    from flows.canary import canary_analysis_flow
    from tasks.canary import gate_candidate

    preview = gate_candidate(cfg, model, version)
    if not preview["promoted"]:
        return promote_model(cfg, model, preview["candidate_version"])  # records the refusal as always
    return canary_analysis_flow(model, preview["candidate_version"], config=cfg, mode=cfg.rollout.mode)


@flow(name="rollback", log_prints=True)
def rollback_flow(
    model: str, config: LifecycleConfig | None = None, reason: str = "manual", force: bool = False
) -> dict:
    """@champion back to the previous champion (repeatable down the history); `loopline.model.rolled_back`.
    Refused when that champion was trained on a contract the current one changed incompatibly, unless `force`."""
    cfg = resolve_config(config)
    return rollback_model(cfg, model, reason, force)
