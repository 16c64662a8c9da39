"""Tasks of the promotion stage: evaluate, promote (one at a time per model), roll back; model cards as
artifacts; `loopline.model.promoted` / `loopline.model.rolled_back` events.

Serialisation has two layers: here a Prefect global concurrency limit `promote-<model>` (one slot, created
on first use) keeps promotions of a model apart across workers and hosts; in the core a file lock plus a
check-and-set on `@champion` keeps them apart even without Prefect (loopline.release.champion). The wait
for the slot is bounded (evaluation.promotion_slot_timeout_seconds); events go out after the alias moved,
and `event_emitted` in a result says whether the Prefect API accepted the event.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact

from loopline.config import LifecycleConfig
from loopline.packaging.model_card import render_model_card
from loopline.packaging.registry import tracking_uri_for
from loopline.release import evaluate, promote, rollback
from tasks import stage_cache
from tasks.common import (
    emit,
    ensure_global_limit,
    hold_slots,
    lake_for,
    retry_unless_user_error,
    run_logger,
    slug,
)


def limit_name(model: str) -> str:
    return f"promote-{slug(model)}"


def ensure_limit(name: str, slots: int = 1) -> None:
    """Create the global concurrency limit when it is missing (a missing limit would not limit anything)."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        ensure_global_limit(client, name, slots)


@contextmanager
def promotion_slot(model: str, timeout_s: float):
    """The one slot of `promote-<model>`, held while the decision is made and the alias moves; waits at
    most `timeout_s` (evaluation.promotion_slot_timeout_seconds) for it."""
    name = limit_name(model)
    ensure_limit(name)
    setting = "evaluation.promotion_slot_timeout_seconds"
    with hold_slots(name, 1, timeout_s, setting, f"promote or roll back {model!r}"):
        yield


@task(
    name="evaluate-model",
    task_run_name="evaluate {model} v{version}",
    retries=2,
    retry_delay_seconds=[5, 15],
    retry_condition_fn=retry_unless_user_error,
)
def evaluate_model(cfg: LifecycleConfig, model: str, version: int | None = None) -> dict[str, Any]:
    """Metrics of the version against @champion on the same rows; nothing moves. Card as an artifact."""
    result = evaluate(cfg, model, version, lake=lake_for(cfg))
    card = render_model_card(result)
    create_markdown_artifact(
        key=f"evaluation-{slug(model)}",
        markdown=card,
        description=f"evaluation of {model} v{result['candidate_version']}",
    )
    run_logger().info(
        "%s v%s: %s %.4f (champion %s)",
        model,
        result["candidate_version"],
        result["primary_metric"],
        result["metrics"][result["primary_metric"]],
        result["champion_version"],
    )
    return result


# Retried only on I/O errors; a retry after a completed move finds the version already champion.
@task(
    name="promote-model",
    task_run_name="promote {model} v{version}",
    retries=2,
    retry_delay_seconds=[5, 15],
    retry_condition_fn=retry_unless_user_error,
)
def promote_model(cfg: LifecycleConfig, model: str, version: int | None = None) -> dict[str, Any]:
    """Infra validation, evaluation against @champion, the gate, the alias move; card and event."""
    log = run_logger()
    log.info("waiting for the promotion slot of %s (limit %r)", model, limit_name(model))
    with promotion_slot(model, cfg.evaluation.promotion_slot_timeout_seconds):
        result = promote(cfg, model, version, lake=lake_for(cfg))
    result["event_emitted"] = report_promotion(result)
    if (key := _record_key(cfg, model, result["candidate_version"])) is not None:
        again = {**result, "event_emitted": False}  # deciding the same again moves nothing, emits nothing
        stage_cache.save(cfg, key, _champion(cfg, model), again)
    verdict = "promoted" if result["promoted"] else "not promoted"
    log.info("%s v%s %s: %s", model, result["candidate_version"], verdict, result["reason"])
    return result


def warm_infra_validation() -> None:
    """Start promotion's infra-validation process now (loopline.release.infra_template: it imports torch and
    the serving stack once, ~2 s here), so that a promotion coming later in this process finds it ready
    instead of waiting for it. Never raises; a promotion starts it anyway when it is not running."""
    from loopline.release.infra_template import prestart

    prestart()


def recorded_promotion(cfg: LifecycleConfig, model: str, version: int) -> dict | None:
    """The decision recorded for `version` when @champion is still what that decision left (read without
    mlflow): a rerun would find the same. None: decide it (the promotion flow)."""
    key = _record_key(cfg, model, version)
    return None if key is None else stage_cache.load(cfg, key, _champion(cfg, model))


@task(name="promote-model", task_run_name="promote {model} v{version}")
def promotion_unchanged(cfg: LifecycleConfig, model: str, version: int, recorded: dict) -> dict[str, Any]:
    """The lifecycle's promote stage on an unchanged rerun: the recorded decision, shown as Cached."""
    run_logger().info(
        "%s v%s: decided before, @champion unchanged (v%s)", model, version, recorded["champion_version"]
    )
    return stage_cache.cached(recorded)


def _record_key(cfg: LifecycleConfig, model: str, version: int | None) -> str | None:
    """Direct promotions only: an approval or a canary involves more than the registry's state."""
    if version is None or cfg.rollout.require_approval or cfg.rollout.mode != "direct":
        return None
    registry = stage_cache.tracking_identity(tracking_uri_for(cfg, None))
    if registry is None:
        return None
    settings = [cfg.evaluation.model_dump(mode="json"), cfg.rollout.model_dump(mode="json")]
    return stage_cache.key_of("promote", registry, model, int(version), settings, lake_for(cfg).root)


def _champion(cfg: LifecycleConfig, model: str) -> int | None:
    found = stage_cache.champion_alias(tracking_uri_for(cfg, None), model)
    return None if found is False or found is None else found


def report_promotion(result: dict[str, Any]) -> bool:
    """The model card as a markdown artifact; `loopline.model.promoted` when the alias moved. Returns
    whether the event went out and the API accepted it (False when nothing moved)."""
    model = result["model"]
    create_markdown_artifact(
        key=f"model-card-{slug(model)}",
        markdown=render_model_card(result),
        description=f"{model} v{result['candidate_version']}: {'promoted' if result['promoted'] else 'not promoted'}",
    )
    if not result["promoted"]:
        return False
    return emit(
        "loopline.model.promoted",
        f"loopline.model.{model}",
        {
            "model": model,
            "version": result["candidate_version"],
            "champion_version": result["champion_version"],
            "previous_version": result["previous_version"],
            "reason": result["reason"],
            "primary_metric": result["primary_metric"],
            "metrics": result["metrics"],
            "improvement": result["improvement"],
            "ci": result["ci"],
            "model_card_uri": result.get("model_card_uri"),
        },
    )


@task(name="rollback-model", task_run_name="rollback {model}")
def rollback_model(
    cfg: LifecycleConfig, model: str, reason: str = "manual", force: bool = False
) -> dict[str, Any]:
    """@champion back to the previous champion (not to one trained on a contract the current one broke,
    unless `force`); `loopline.model.rolled_back`."""
    with promotion_slot(model, cfg.evaluation.promotion_slot_timeout_seconds):
        result = rollback(
            model,
            tracking_uri=tracking_uri_for(cfg, None),
            reason=reason,
            home=cfg.home,
            lock_timeout_s=cfg.evaluation.lock_timeout_seconds,
            lake=lake_for(cfg),
            force=force,
        )
    run_logger().info(
        "%s rolled back from v%s to v%s (%s)",
        model,
        result["rolled_back_version"],
        result["champion_version"],
        reason,
    )
    lines = [
        f"# Rollback of `{model}`",
        "",
        f"`@champion`: v{result['rolled_back_version']} → **v{result['champion_version']}**; "
        f"`@previous`: {('v' + str(result['previous_version'])) if result['previous_version'] else 'none'}.",
        "",
        f"Reason: {reason}",
    ]
    create_markdown_artifact(
        key=f"rollback-{slug(model)}", markdown="\n".join(lines), description=f"rollback of {model}"
    )
    result["event_emitted"] = emit("loopline.model.rolled_back", f"loopline.model.{model}", dict(result))
    return result
