"""Human approval of a promotion, and the gate's verdict without a move. No Prefect here (flows/promotion.py
pauses the run; tasks/approval.py adds artifacts and events).

`preview_gate` is the promotion gate of loopline.release.promotion (loader gate, infra validation,
evaluation against @champion on the same rows, the gate's checks) with nothing moved: what an approver sees,
and what a canary starts from. After an approval the promotion runs the real gate again, under the
`promote-<M>` slot and the model's lock: the champion may have moved while a person was deciding.

`record_approval` writes the decision and who made it where the promotion's own records are: a history
entry (action "approval"; champion, previous and stack unchanged, so replaying the history still gives the
chain of champions), a version tag `loopline.approval`, and an MLflow run holding the model card with the
decision appended.
"""

from __future__ import annotations

from typing import Any

from loopline.config import LifecycleConfig
from loopline.packaging.model_card import render_model_card
from loopline.packaging.registry import newest_version, registry_client, tracking_uri_for, version_info
from loopline.release.champion import (
    now_iso,
    promotion_lock,
    read_state,
    reconcile,
    tag_version,
    write_entry,
)
from loopline.release.decisions import log_decision_run
from loopline.release.gate import Decision, check, decide
from loopline.release.scoring import evaluate_versions
from loopline.storage.lake import Lake

APPROVAL_TAG = "loopline.approval"


def preview_gate(
    cfg: LifecycleConfig, model: str, version: int | None, *, lake: Lake, infra_validate: bool = True
) -> dict[str, Any]:
    """The gate's decision on `version` (default: the newest) against the current champion; nothing moves.
    Returns the promotion result's fields (promoted = would be promoted), for the card and the approver."""
    from loopline.packaging.safe_load import GateVerdicts
    from loopline.release.promotion import _refusal, _result, run_infra_validation

    tracking_uri = tracking_uri_for(cfg, None)
    client = registry_client(tracking_uri)
    version = int(version) if version is not None else newest_version(client, model)
    version_info(client, model, version)
    verdicts = GateVerdicts(client, tracking_uri)  # the gate reads each version once in this preview
    refusal = _refusal(verdicts, model, version)
    if refusal is not None:
        infra = {"ok": False, "refused": True, "reason": refusal}
    elif infra_validate:
        infra = run_infra_validation(
            cfg, model, version, lake=lake, tracking_uri=tracking_uri, verdicts=verdicts
        )
    else:
        infra = {"ok": True, "skipped": True}
    evaluation: dict[str, Any] = {}
    if not infra["ok"]:
        reason = infra["reason"]
        decision = Decision(
            False, f"infra validation failed: {reason}", [check("infra validation", False, reason)]
        )
    else:
        champion = reconcile(client, model, read_state(client, model)).champion
        evaluation = evaluate_versions(
            cfg,
            model,
            version,
            lake=lake,
            tracking_uri=tracking_uri,
            champion_version=None if champion == version else champion,
            verdicts=verdicts,
        )
        evaluation["champion_version"] = champion
        decision = decide(cfg.evaluation, evaluation)
    return _result(model, version, decision, evaluation, infra, client)


def approval_card(preview: dict[str, Any], approval: dict[str, Any] | None) -> str:
    """The model card of the gate's preview, with the human decision (or the wait for it) at the end."""
    lines = [render_model_card(preview), "", "## Human approval", ""]
    if approval is None:
        lines.append("Waiting for a decision: resume the paused `promotion` run with approve or reject.")
    else:
        lines += [
            f"**{approval['decision'].upper()}** by {approval['approver'] or 'nobody'} "
            f"at {approval['decided_at']}.",
            "",
            f"Comment: {approval['comment'] or '—'}",
        ]
    return "\n".join(lines)


def record_approval(
    cfg: LifecycleConfig, model: str, version: int, preview: dict[str, Any], approval: dict[str, Any]
) -> dict[str, Any]:
    """The decision (approve / reject / timeout) and its approver in the registry history, a version tag
    and the model card. Returns the approval with `history_seq` and `model_card_uri`."""
    tracking_uri = tracking_uri_for(cfg, None)
    client = registry_client(tracking_uri)
    entry = None
    with promotion_lock(cfg.home, model, cfg.evaluation.lock_timeout_seconds):
        state = reconcile(client, model, read_state(client, model))
        if state.champion is not None:  # the history is a chain of champions: none yet, nothing to chain
            entry = {
                "seq": state.next_seq,
                "action": "approval",
                "time": now_iso(),
                "champion": state.champion,
                "previous": state.previous,
                "from": state.champion,
                "reason": f"{approval['decision']} v{version} by {approval['approver'] or 'nobody'}: "
                f"{approval['comment'] or ''}".strip(),
                "approval": {**approval, "version": version},
                "stack": state.stack,
            }
            write_entry(client, model, entry)
    card = approval_card(preview, approval)
    record = {**preview, "reason": f"approval {approval['decision']}: {preview['reason']}"}
    record["promoted"] = False  # this run records the human decision; the promotion records its own
    run_id = log_decision_run(client, cfg, model, record, card, tracking_uri)
    out = {
        **approval,
        "version": version,
        "history_seq": entry["seq"] if entry else None,
        "model_card_uri": f"runs:/{run_id}/model_card.md" if run_id else None,
    }
    tag_version(client, model, version, {APPROVAL_TAG: out})
    return out
