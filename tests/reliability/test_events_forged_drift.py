"""Events are hints: a drift event for a model with no @champion (never registered, or registered and never
promoted; forged or stale) starts no training. The retrain flow runs on a real Prefect API with the
parameters the `retrain` deployment's trigger passes from such an event, and ends Skipped saying why;
trainings started are counted from the API (child flow runs) and the registry (model versions).
With retrain.on_drift_without_champion the same event goes on to the gates that decide a training."""

from __future__ import annotations

import uuid

import pytest

from loopline.config import LifecycleConfig
from tests.reliability.conftest import rounds

pytestmark = pytest.mark.integration


@pytest.fixture
def api(prefect_api):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
        yield prefect_api
        # send the runs' queued logs while the server is up (a log left for exit retries a dead server)
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)


def child_runs(run_id) -> int:
    """Flow runs started inside the retrain run (features, train, promotion are subflows)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id])),
            sort=FlowRunSort.ID_DESC,
            limit=50,
            offset=0,
        )
    return len(runs)


def forged_drift_event(model: str) -> dict:
    """What the deployment trigger turns a `loopline.drift.detected` event into (prefect.yaml)."""
    payload = {"model": model, "model_version": "1", "drift_share": 0.9, "features": ["f00"]}
    return {"model": model, "reason": "drift", "event_payload": payload}


def test_forged_drift_events_for_models_without_a_champion_train_nothing(api, home, reliability_report):
    from flows.retrain import retrain_flow
    from loopline.packaging.registry import default_tracking_uri, registry_client

    cfg = LifecycleConfig(home=str(home))
    registry = registry_client(default_tracking_uri(cfg.home))
    tag = uuid.uuid4().hex[:8]
    never_promoted = registry.create_registered_model(f"unpromoted-{tag}").name
    models = [f"ghost-{tag}", never_promoted, f"ghost.v2-{tag}", "../escape", f"Ghost_{tag}-x"]
    models = models[: rounds(2, len(models))]

    started, skipped = 0, 0
    for model in models:
        state = retrain_flow(cfg, **forged_drift_event(model), return_state=True)
        result = state.result()
        started += child_runs(state.state_details.flow_run_id)
        started += len(registry.search_model_versions(f"name = '{model}'"))
        skipped += state.name == "Skipped"
        assert state.name == "Skipped" and result["skipped"] is True, (model, state.message)
        assert "cooldown" not in result, f"the event for {model!r} went on to the training gates"
        assert result["champion"]["proceed"] is False
        assert repr(model) in state.message and "retrain.on_drift_without_champion" in state.message
        known = (
            "is registered but has no @champion" if model == never_promoted else "is not a registered model"
        )
        assert known in state.message
    assert not (home / "lake" / "checkpoints").exists() and not (home / "lake" / "features").exists()
    reliability_report.add(
        "forged drift event for a model without a champion",
        tries=len(models),
        note=f"trainings started: {started}; runs skipped: {skipped} of {len(models)}",
    )
    assert started == 0 and skipped == len(models)

    # retrain.on_drift_without_champion: the champion gate lets the same event through to the cooldown
    # and freshness gates that decide any training (freshness stops it here: the lake has no labelled rows)
    cfg.retrain.on_drift_without_champion = True
    result = retrain_flow(cfg, **forged_drift_event(models[0]), return_state=True).result()
    assert result["champion"]["proceed"] is True
    assert "on_drift_without_champion is on" in result["champion"]["message"]
    assert result["cooldown"]["proceed"] is True
    assert result["freshness"]["message"].startswith("no champion yet and only 0 labelled row(s)")
