"""The data plane through a real Prefect API: flows, artifacts, events, caching, and the CLI's exit codes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from loopline.config import LifecycleConfig
from tests.cli_support import run_cli as cli

REPO = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.integration


def api_post(path: str, body: dict) -> list | dict:
    """POST to the real Prefect API. (Raw HTTP: the 3.8.8 client sends `limit: null`, which this server refuses.)"""
    import httpx

    response = httpx.post(os.environ["PREFECT_API_URL"] + path, json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def test_ingest_and_features_flows_report_to_prefect(prefect_api, home):
    from flows.features import features_flow
    from flows.ingest import ingest_flow

    cfg = LifecycleConfig(home=str(home))
    cfg.synthetic.rows = 3000
    cfg.synthetic.bad_fraction = 0.01
    (batch,) = ingest_flow(cfg)
    assert batch["accepted"] and batch["rows_quarantined"] >= 25
    assert batch["event_emitted"] is True  # the API accepted loopline.data.ingested
    key = f"batch-demo-{batch['batch_id']}"
    arts = api_post(
        "/artifacts/filter", {"artifacts": {"key": {"any_": [key, key + "-expectations"]}}, "limit": 10}
    )
    assert {a["type"] for a in arts} == {"markdown", "table"}
    md = next(a for a in arts if a["type"] == "markdown")["data"]
    assert "quarantined" in md and "expect_column_values" in md

    first = features_flow(cfg)
    assert first["rows_added"] == batch["rows_clean"]
    again = features_flow(cfg)  # same clean version, same config, same code: the cached result, marked
    assert again == {**first, "cached": True} and "cached" not in first
    flows = {f["name"] for f in api_post("/flows/filter", {"limit": 50})}
    assert {"ingest", "features"} <= flows
    tasks = api_post("/task_runs/filter", {"limit": 200})
    assert any(t["name"].startswith("build-features") and t["state"]["name"] == "Cached" for t in tasks)
    # a refit rewrites features/D: the next plain build is not the result cached before the refit (which
    # named the old transform and features version, and training pinned that version)
    refit = features_flow(cfg, refit=True)
    assert refit["refit"] and refit["features_version"] == first["features_version"] + 1
    after = features_flow(cfg)
    assert after["features_version"] == refit["features_version"], after
    assert after["transform_version"] == refit["transform_version"] and after["rows_added"] == 0
    assert features_flow(cfg) == {**after, "cached": True}  # and that one is cached in turn


def test_events_are_emitted_for_accepted_and_rejected_batches(prefect_api, home, tmp_path):
    from flows.ingest import ingest_flow
    from loopline.errors import DataQualityError

    cfg = LifecycleConfig(home=str(home))
    cfg.synthetic.rows = 500
    cfg.synthetic.seed = 11
    ingest_flow(cfg)
    bad = LifecycleConfig(home=str(home))
    bad.synthetic.rows = 500
    bad.synthetic.seed = 12
    bad.synthetic.id_offset = 10_000
    bad.synthetic.bad_fraction = 0.2  # over the contract's 5%
    with pytest.raises(DataQualityError) as err:
        ingest_flow(bad)
    assert err.value.summary["rows_in"] == 500 and err.value.summary["accepted"] is False

    import time

    body = {
        "filter": {"event": {"prefix": ["loopline.data."]}, "resource": {"id": ["loopline.dataset.demo"]}},
        "limit": 50,
    }
    deadline = time.time() + 30
    names: list[str] = []
    while time.time() < deadline:
        names = [e["event"] for e in api_post("/events/filter", body)["events"]]
        if "loopline.data.ingested" in names and "loopline.data.rejected" in names:
            break
        time.sleep(1)
    assert "loopline.data.ingested" in names and "loopline.data.rejected" in names


def test_cli_exit_codes_and_json(prefect_api, home, tmp_path):
    good = cli("ingest", "--json", "--set", "synthetic.rows=400", home=home)
    assert good.returncode == 0, good.stderr
    out = json.loads(good.stdout.strip().splitlines()[-1])
    assert set(out) >= {
        "dataset",
        "batch_id",
        "rows_in",
        "rows_clean",
        "rows_quarantined",
        "duplicate_batch",
        "raw_version",
        "clean_version",
        "quarantine_version",
    }
    # the same batch again (pinned seed and ids: an unset pair makes a fresh batch each run) is a no-op
    pinned = ["--set", "synthetic.rows=400", "--set", "synthetic.seed=0", "--set", "synthetic.id_offset=0"]
    dup = json.loads(cli("ingest", "--json", *pinned, home=home).stdout.strip().splitlines()[-1])
    assert dup["duplicate_batch"] is True and dup["batch_id"] == out["batch_id"]
    fresh = json.loads(
        cli("ingest", "--json", "--set", "synthetic.rows=400", home=home).stdout.strip().splitlines()[-1]
    )
    assert fresh["duplicate_batch"] is False and fresh["rows_quarantined"] == 0

    broken = tmp_path / "broken.yaml"
    broken.write_text(
        yaml.safe_dump(
            {"dataset": "x", "id": "a", "label": "b", "task": "binary", "columns": {"a": {"type": "nope"}}}
        )
    )
    res = cli("ingest", "--contract", str(broken), "--source", str(tmp_path), home=home)
    assert res.returncode == 2 and "broken.yaml" in res.stderr and "Traceback" not in res.stderr

    missing = cli("ingest", "--source", str(tmp_path / "nope.csv"), home=home)
    assert missing.returncode == 2 and "nope.csv" in missing.stderr

    rejected = cli(
        "ingest",
        "--json",
        "--set",
        "synthetic.rows=400",
        "--set",
        "synthetic.seed=5",
        "--set",
        "synthetic.id_offset=9000",
        "--set",
        "synthetic.bad_fraction=0.3",
        home=home,
    )
    assert rejected.returncode == 3, rejected.stderr
    assert json.loads(rejected.stdout.strip().splitlines()[-1])["accepted"] is False

    bad_set = cli("features", "--set", "features.numeric=cube", home=home)
    assert bad_set.returncode == 2 and "features.numeric" in bad_set.stderr

    status = json.loads(cli("status", "--json", home=home).stdout.strip().splitlines()[-1])
    assert (
        status["datasets"]["demo"]["batches_accepted"] == 2  # the first and the fresh one
        and status["datasets"]["demo"]["batches_rejected"] == 1
    )
