"""The retrain deployment on a real Prefect server: its triggers collapse a burst of drift events into
one flow run per model, carry the event into the run's parameters, and the in-flow cooldown lets exactly
one of several simultaneous runs proceed."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import httpx
import pytest

pytestmark = pytest.mark.integration


@pytest.fixture
def client(prefect_api):
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # prefect fixes its settings at import, which may predate the fixture's PREFECT_API_URL
    with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
        with get_client(sync_client=True) as c:
            yield c


@pytest.fixture
def retrain_deployment(prefect_api, client):
    """The `retrain` deployment of prefect.yaml (with its triggers), removed again afterwards so other
    tests' events start nothing."""
    from flows.project import deploy_project
    from flows.stack import create_work_pools

    create_work_pools(prefect_api)
    from tests.cli_support import deploy_env

    deployed = deploy_project(
        deploy_env(prefect_api), only=["retrain"], trigger_within_seconds={"loopline.drift.detected": 3600}
    )
    assert deployed == ["retrain/retrain"]
    deployment = client.read_deployment_by_name("retrain/retrain")
    windows = {
        a.trigger.expect.pop(): a.trigger.within.total_seconds()
        for a in client.read_resource_related_automations(f"prefect.deployment.{deployment.id}")
    }  # `prefect deploy` made the automations; loopline moved only the drift trigger's window
    assert windows == {"loopline.drift.detected": 3600, "loopline.data.ingested": 0}
    yield deployment
    client.delete_resource_owned_automations(f"prefect.deployment.{deployment.id}")
    client.delete_deployment(deployment.id)


def post_events(api_url: str, events: list[dict]) -> None:
    now = datetime.now(UTC).isoformat()
    body = [{"id": str(uuid.uuid4()), "occurred": now, **e} for e in events]
    httpx.post(f"{api_url}/events", json=body, timeout=30).raise_for_status()


def runs_of(client, deployment_id) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    # every paging field explicit: this server refuses the client's nulls (a 422)
    return client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
        sort=FlowRunSort.ID_DESC,
        limit=200,
        offset=0,
    )


def wait_for_runs(client, deployment_id, models: set[str], settle_s: float = 6.0, timeout_s: float = 60.0):
    """Runs for `models`, once each model has one and no new run appeared for `settle_s`."""
    deadline = time.monotonic() + timeout_s
    seen, last_change = -1, time.monotonic()
    while time.monotonic() < deadline:
        runs = [r for r in runs_of(client, deployment_id) if r.parameters.get("model") in models]
        if len(runs) != seen:
            seen, last_change = len(runs), time.monotonic()
        if {r.parameters.get("model") for r in runs} == models and time.monotonic() - last_change > settle_s:
            return runs
        time.sleep(0.5)
    raise AssertionError(f"runs for {models} did not settle within {timeout_s}s: {seen} so far")


def test_a_burst_of_five_drift_events_starts_one_run_per_model(prefect_api, client, retrain_deployment):
    a, b = f"burst-{uuid.uuid4().hex[:8]}", f"burst-{uuid.uuid4().hex[:8]}"
    burst = [
        {
            "event": "loopline.drift.detected",
            "resource": {"prefect.resource.id": f"loopline.model.{model}"},
            "payload": {"model": model, "drift_share": 0.5 + i / 100, "features": ["f00", "f01"]},
        }
        for i in range(5)
        for model in (a, b)
    ]
    post_events(prefect_api, burst)

    runs = wait_for_runs(client, retrain_deployment.id, {a, b})
    assert sorted(r.parameters["model"] for r in runs) == sorted([a, b])  # 10 events, 2 models: 2 runs
    for r in runs:
        assert r.parameters["reason"] == "drift"
        payload = r.parameters["event_payload"]
        assert isinstance(payload, dict) and payload["model"] == r.parameters["model"]
        assert payload["features"] == ["f00", "f01"] and 0.5 <= payload["drift_share"] < 0.55


def test_an_ingested_batch_starts_a_new_data_run_for_its_dataset(prefect_api, client, retrain_deployment):
    dataset = f"ds-{uuid.uuid4().hex[:8]}"
    post_events(
        prefect_api,
        [
            {
                "event": "loopline.data.ingested",
                "resource": {"prefect.resource.id": f"loopline.dataset.{dataset}"},
                "payload": {"batch_id": "b1", "rows": 1200, "source": "x.csv", "rows_quarantined": 0},
            }
        ],
    )
    (run,) = wait_for_runs(client, retrain_deployment.id, {dataset}, settle_s=2)
    assert run.parameters["reason"] == "new-data"
    assert run.parameters["event_payload"]["rows"] == 1200


def test_in_flow_cooldown_lets_one_of_five_simultaneous_runs_retrain(client, retrain_deployment):
    from prefect.states import Completed

    from loopline.monitoring.retrain import CLAIM_TAG
    from tasks.retrain import cooldown_decision

    def verdicts(ids, model, reason="drift"):
        out = []
        for i in ids:
            d = cooldown_decision(client, str(i), model, reason, cooldown_hours=6)
            out.append("go" if d.proceed else ("wait" if d.waiting_for else "stop"))
        return out

    model = f"cool-{uuid.uuid4().hex[:8]}"
    ids = [
        client.create_flow_run_from_deployment(
            retrain_deployment.id, parameters={"model": model, "reason": "drift"}
        ).id
        for _ in range(5)
    ]
    # all scheduled: the first may go, the others wait for the ones before them to decide
    assert verdicts(reversed(ids), model) == ["wait", "wait", "wait", "wait", "go"]
    # the first passes its gates and claims the retrain: the other four stop, naming it
    client.update_flow_run(ids[0], tags=[CLAIM_TAG])
    assert verdicts(ids, model) == ["go", "stop", "stop", "stop", "stop"]
    blocked = cooldown_decision(client, str(ids[4]), model, "drift", 6)
    assert blocked.details["blocking_run"] == str(ids[0]) and "cooldown" in blocked.message

    # had it stopped at its freshness gate instead (no claim, state Skipped), the second would go
    client.update_flow_run(ids[0], tags=[])
    client.set_flow_run_state(ids[0], Completed(name="Skipped", message="no new data"), force=True)
    assert verdicts(ids, model) == ["go", "go", "wait", "wait", "wait"]
    # a manual run is never held, and holds no one
    manual = client.create_flow_run_from_deployment(
        retrain_deployment.id, parameters={"model": model, "reason": "manual"}
    ).id
    assert verdicts([manual], model, reason="manual") == ["go"]
    for i in [*ids, manual]:
        client.delete_flow_run(i)
