"""Promotion flows: evaluate a version against the champion, promote it through the gate, roll back.

`loopline evaluate`, `loopline promote` and `loopline rollback` run these; the lifecycle and retrain flows
call `promotion_flow` after training.
"""

from __future__ import annotations

from prefect import flow

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
    # Gate and move: the model card and the `loopline.model.promoted` event come with the decision
    return promote_model(cfg, model or model_name_for(cfg), version)


@flow(name="rollback", log_prints=True)
def rollback_flow(model: str, config: LifecycleConfig | None = None, reason: str = "manual") -> dict:
    """@champion back to the previous champion (repeatable down the history); `loopline.model.rolled_back`."""
    cfg = resolve_config(config)
    return rollback_model(cfg, model, reason)
