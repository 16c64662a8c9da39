"""Tasks of the approval step: the gate's preview with the model card and evidence as artifacts and
`loopline.model.approval.requested`; the decision recorded with `loopline.model.approval.decided`.

The wait itself is in the flow (flows/promotion.py: `pause_flow_run(wait_for_input=ApprovalInput)`), which
holds no concurrency slot while a person decides: the `promote-<M>` slot is taken only by the promotion
that follows an approval, and that promotion runs the gate again.
"""

from __future__ import annotations

import json
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE
from prefect.input import RunInput
from pydantic import Field

from loopline.config import LifecycleConfig
from loopline.release.approval import approval_card, preview_gate, record_approval
from loopline.release.champion import now_iso
from tasks.common import emit, lake_for, run_logger, slug


class ApprovalInput(RunInput):
    """The form of a paused promotion in the Prefect UI (the open-source server has no users: the approver
    types their name)."""

    approve: bool = Field(False, description="approve: promote (the gate runs again); off: reject")
    approver: str = Field(..., min_length=1, max_length=200, description="who decides (name or e-mail)")
    comment: str = Field("", max_length=2000, description="why, for the registry history and the model card")


@task(name="request-approval", task_run_name="request approval {model} v{version}", cache_policy=NONE)
def request_approval(cfg: LifecycleConfig, model: str, version: int | None) -> dict[str, Any]:
    """The gate's verdict without a move; when it would promote, the card and the evidence as artifacts and
    `loopline.model.approval.requested`. Returns the preview (promoted: the gate would promote)."""
    preview = preview_gate(cfg, model, version, lake=lake_for(cfg))
    if not preview["promoted"]:
        return preview
    key = slug(model)
    create_markdown_artifact(
        key=f"model-card-{key}",
        markdown=approval_card(preview, None),
        description=f"{model} v{preview['candidate_version']}: waiting for approval",
    )
    evidence = {
        k: preview.get(k) for k in ("reason", "checks", "metrics", "champion_metrics", "ci", "slices")
    }
    create_markdown_artifact(
        key=f"gate-evidence-{key}",
        markdown="# Gate evidence\n\n```json\n" + json.dumps(evidence, indent=2, default=str) + "\n```",
        description=f"the promotion gate on {model} v{preview['candidate_version']}",
    )
    preview["event_emitted"] = emit(
        "loopline.model.approval.requested",
        f"loopline.model.{model}",
        {
            "model": model,
            "version": preview["candidate_version"],
            "champion_version": preview["champion_version"],
            "reason": preview["reason"],
            "timeout_hours": cfg.rollout.approval_timeout_hours,
        },
    )
    run_logger().info("%s v%s waits for approval: %s", model, preview["candidate_version"], preview["reason"])
    return preview


def decision_of(answer: ApprovalInput | None) -> dict[str, Any]:
    """The approval record of a form answer, or of the timeout (None): a timeout rejects."""
    if answer is None:
        return {"decision": "timeout", "approved": False, "approver": None, "comment": "no decision in time"}
    return {
        "decision": "approve" if answer.approve else "reject",
        "approved": bool(answer.approve),
        "approver": answer.approver,
        "comment": answer.comment,
    }


@task(name="record-approval", task_run_name="record approval {model} v{version}", cache_policy=NONE)
def record_decision(
    cfg: LifecycleConfig, model: str, version: int, preview: dict[str, Any], decision: dict[str, Any]
) -> dict[str, Any]:
    """History entry, version tag, model card (MLflow and artifact); `loopline.model.approval.decided`."""
    approval = record_approval(cfg, model, version, preview, {**decision, "decided_at": now_iso()})
    create_markdown_artifact(
        key=f"model-card-{slug(model)}",
        markdown=approval_card(preview, approval),
        description=f"{model} v{version}: {approval['decision']}",
    )
    approval["event_emitted"] = emit(
        "loopline.model.approval.decided", f"loopline.model.{model}", {"model": model, **approval}
    )
    run_logger().info("%s v%s: %s by %s", model, version, approval["decision"], approval["approver"])
    return approval


PROMOTION_DEPLOYMENT = "promotion/promotion"


@task(name="hand-off-promotion", task_run_name="hand off promotion {model} v{version}", cache_policy=NONE)
def hand_off_promotion(cfg: LifecycleConfig, model: str, version: int) -> dict[str, Any] | None:
    """With approval required, the lifecycle does not wait for a person: it starts the `promotion` deployment
    (its own flow run, where the pause lives) and finishes. None when there is no such deployment (a run without
    `loopline up`): then the caller promotes inline and the pause is in this run."""
    from prefect import get_client
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(PROMOTION_DEPLOYMENT)
        except ObjectNotFound:
            return None
    params = {"config": cfg.model_dump(mode="json"), "model": model, "version": version}
    child = run_deployment(PROMOTION_DEPLOYMENT, parameters=params, timeout=0, as_subflow=False)
    run_logger().info(
        "%s v%s waits for approval in the promotion run %s (%s): approve or reject it there",
        model,
        version,
        child.name,
        child.id,
    )
    return {
        "model": model,
        "candidate_version": version,
        "promoted": False,
        "awaiting_approval": True,
        "promotion_flow_run_id": str(child.id),
        "promotion_flow_run_name": child.name,
    }
