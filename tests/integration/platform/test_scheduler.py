"""The session's real `prefect server start` turns an interval schedule into SCHEDULED flow runs.

Why: with SQLAlchemy 2.1 the Prefect 3.8.8 scheduler services (`schedule_deployments`,
`schedule_recent_deployments`) fail on every pass with `InvalidRequestError: Can't evaluate bulk DML
statement` (the ORM bulk INSERT of flow runs carries a "state" key, and 2.1 routes that key to the
`FlowRun.state` hybrid property, which has no `bulk_dml` hook), so no scheduled deployment (drift-watch,
maintenance) ever gets a run. pyproject pins sqlalchemy<2.1 for it; this test holds the pin to its word.

No settings are changed: the recent-deployments scheduler runs every 5 s by default and picks up any
deployment updated in the last 6 s, so a fresh deployment gets its runs within seconds.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.integration

BULK_DML_ERROR = "Can't evaluate bulk DML"


def post(api: httpx.Client, path: str, body: dict) -> httpx.Response:
    """POST, retrying a 503 as Prefect's own client does: a fresh SQLite server answers writes with
    "database is locked" (503) now and then while its services start."""
    for _ in range(10):
        resp = api.post(path, json=body)
        if resp.status_code != 503:
            break
        time.sleep(0.5)
    resp.raise_for_status()
    return resp


def scheduled_runs(api: httpx.Client, deployment_id: str) -> list[dict]:
    body = {
        "deployments": {"id": {"any_": [deployment_id]}},
        "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
        "limit": 10,
    }
    return post(api, "/flow_runs/filter", body).json()


def test_interval_deployment_gets_scheduled_runs(prefect_api):
    log = Path(os.environ["PREFECT_HOME"]) / "server.log"
    name = f"sched-probe-{uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=prefect_api, timeout=30) as api:
        flow = post(api, "/flows/", {"name": name})
        created = post(
            api,
            "/deployments/",
            {
                "name": name,
                "flow_id": flow.json()["id"],
                # paused=False and an active schedule: what `prefect deploy` makes of an `interval:` entry
                "paused": False,
                "schedules": [{"schedule": {"interval": 60}, "active": True}],
            },
        )
        deployment_id = created.json()["id"]
        try:
            deadline = time.monotonic() + 20
            runs = scheduled_runs(api, deployment_id)
            while not runs and time.monotonic() < deadline:
                time.sleep(0.5)
                runs = scheduled_runs(api, deployment_id)
            errors = log.read_text(errors="replace").count(BULK_DML_ERROR)
            assert runs, (
                f"no SCHEDULED run for deployment {name} within 20 s; "
                f"{errors} '{BULK_DML_ERROR}' errors in {log}"
            )
            assert all(r["deployment_id"] == deployment_id for r in runs)
            assert errors == 0, f"{errors} '{BULK_DML_ERROR}' errors from the scheduler in {log}"
        finally:
            # its runs would otherwise sit in the session's API for every later test to see
            api.delete(f"/deployments/{deployment_id}")
