"""The drift flow that starts retrains, on a real Prefect API and real MLflow: the serving window of
predictions/M (only the champion's rows of the last H hours), a file window, the artifacts, the
Prometheus gauges, the verdict log, the `loopline.drift.detected` event, and the skips."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import httpx
import numpy as np
import pandas as pd
import pytest

from loopline.config import LifecycleConfig, SyntheticConfig

pytestmark = pytest.mark.integration
SHIFTED = [f"f{i:02d}" for i in range(24)]


@pytest.fixture
def api(prefect_api):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
        yield prefect_api
        # send what is still queued while the server is up: a log left for exit retries a dead server
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)
        EventsWorker.drain_all(timeout=10)


def post(api: str, path: str, body: dict):
    response = httpx.post(api + path, json={"limit": 50, "offset": 0, **body}, timeout=30)
    response.raise_for_status()
    return response.json()


def tiny_config(home) -> LifecycleConfig:
    cfg = LifecycleConfig(home=str(home))
    cfg.synthetic.rows = 1500
    cfg.training.max_steps = 10
    cfg.training.hidden_sizes = [8]
    cfg.training.eval_every_steps = 10
    return cfg


def train_champion(cfg) -> str:
    """A registered version with its reference profile, made @champion (promotion is not under test)."""
    from mlflow import MlflowClient

    from flows.features import features_flow
    from flows.ingest import ingest_flow
    from flows.training import train_flow

    ingest_flow(cfg)
    features = features_flow(cfg)
    trained = train_flow(cfg, dataset="demo", features_version=features["features_version"])
    assert trained["reference_profile"] == "written"
    MlflowClient().set_registered_model_alias("demo", "champion", trained["model_version"])
    return str(trained["model_version"])


def scored_rows(cfg, version: str, *, rows: int, seed: int, shifted: bool, at: datetime, role="champion"):
    """Rows as the model server logs them to predictions/M (features, _prediction, metadata)."""
    from loopline.data.synthetic import generate_frame
    from loopline.packaging.bundle import load_predictor
    from loopline.serving.registry_source import RegistrySource
    from tasks.drift import tracking_uri

    knobs = SyntheticConfig(rows=rows, seed=seed, id_offset=10_000 * seed)
    if shifted:
        knobs.drift_columns, knobs.drift_mean_shift = SHIFTED, 2.0
    frame = generate_frame(knobs).drop(columns=["churned"])
    bundle = RegistrySource(tracking_uri(cfg), cfg.home + "/cache/models").download("demo", version)
    frame["_prediction"] = load_predictor(bundle).predict(frame).astype(np.float64)
    frame["_model_version"], frame["_role"], frame["_request_id"] = version, role, "r"
    frame["_scored_at"] = pd.Timestamp(at)
    return frame


def append_predictions(cfg, frame: pd.DataFrame) -> None:
    from deltalake import write_deltalake

    from tasks.common import lake_for

    lake = lake_for(cfg)
    write_deltalake(
        lake.table_uri("predictions", "demo"), frame, mode="append", storage_options=lake.storage_options
    )


def test_drift_watch_on_the_serving_window_emits_the_event_and_reports(api, home, tmp_path):
    from flows.drift import drift_flow
    from loopline.monitoring.verdicts import last_drift_verdict
    from tasks.common import lake_for

    cfg = tiny_config(home)
    version = train_champion(cfg)
    now = datetime.now(UTC)
    # inside the window: 800 shifted rows of the champion, plus rows that must not count
    append_predictions(
        cfg, scored_rows(cfg, version, rows=800, seed=5, shifted=True, at=now - timedelta(hours=1))
    )
    append_predictions(
        cfg, scored_rows(cfg, version, rows=300, seed=6, shifted=False, at=now - timedelta(hours=30))
    )
    append_predictions(
        cfg,
        scored_rows(
            cfg, version, rows=200, seed=7, shifted=False, at=now - timedelta(hours=1), role="challenger"
        ),
    )

    started = datetime.now(UTC)  # the session's server holds other tests' drift events for `demo` too
    result = drift_flow(cfg, model="demo", window_hours=24)
    assert result["n_current"] == 800  # old rows and challenger rows are outside the champion's window
    assert result["window"]["kind"] == "predictions" and result["window"]["rows"] == 800
    assert result["drift_detected"] and result["event_emitted"]
    assert set(SHIFTED) <= set(result["drifted_features"])
    assert result["drift_share"] == pytest.approx(
        sum(f["drift"] for f in result["features"].values()) / len(result["features"])
    )
    for name, feature in result["features"].items():
        assert {"method", "score", "threshold", "drift"} <= set(feature), name

    # the event, with the payload the retrain trigger passes on
    body = {
        "filter": {
            "occurred": {"since": started.isoformat()},
            "event": {"name": ["loopline.drift.detected"]},
            "resource": {"id": ["loopline.model.demo"]},
        }
    }
    deadline, events = time.time() + 30, []
    while time.time() < deadline and not events:
        events = post(api, "/events/filter", body)["events"]
        time.sleep(0.5)
    payload = events[0]["payload"]
    assert payload["model"] == "demo" and payload["model_version"] == version
    assert payload["drift_share"] == pytest.approx(result["drift_share"])
    assert set(SHIFTED) <= set(payload["features"]) and payload["window"]["hours"] == 24

    # artifacts, gauges, verdict log
    arts = post(
        api, "/artifacts/filter", {"artifacts": {"key": {"any_": ["drift-demo", "drift-demo-features"]}}}
    )
    assert {a["type"] for a in arts} == {"markdown", "table"}
    gauges = (home / "metrics" / "drift_demo.prom").read_text()
    assert 'loopline_drift_detected{model="demo"} 1' in gauges
    verdict = last_drift_verdict(lake_for(cfg), "demo")
    assert verdict["drift_detected"] and verdict["event_emitted"] and verdict["model_version"] == version
    assert verdict["n_current"] == 800 and set(SHIFTED) <= set(verdict["drifted_features"])

    # a file window of unshifted rows: no drift, no event, and the verdict log moves on
    calm = scored_rows(cfg, version, rows=800, seed=8, shifted=False, at=now)
    path = tmp_path / "calm.csv"
    calm.drop(columns=[c for c in calm.columns if c.startswith("_")]).to_csv(path, index=False)
    quiet = drift_flow(cfg, model="demo", current=str(path))
    assert quiet["window"]["kind"] == "file" and quiet["n_current"] == 800
    assert not quiet["drift_detected"] and not quiet["event_emitted"]
    assert quiet["prediction"] is not None  # the champion scored the file
    assert last_drift_verdict(lake_for(cfg), "demo")["drift_detected"] is False

    # six shifted rows: too few to judge (any distance looks like drift on them): skipped, no event
    tiny = scored_rows(cfg, version, rows=6, seed=9, shifted=True, at=now)
    tiny.drop(columns=[c for c in tiny.columns if c.startswith("_")]).to_csv(
        tmp_path / "six.csv", index=False
    )
    few = drift_flow(cfg, model="demo", current=str(tmp_path / "six.csv"), return_state=True)
    assert few.name == "Skipped" and "6 row(s), fewer than drift.min_rows=100" in few.message
    assert few.result()["drift_detected"] is False and few.result()["event_emitted"] is False
    assert last_drift_verdict(lake_for(cfg), "demo")["n_current"] == 800  # no verdict row for it

    # the drift-watch deployment's form: every model with a @champion, the same check per model
    watched = drift_flow(cfg, current=str(path), all_models=True)
    assert set(watched["models"]) == {"demo"}
    assert watched["models"]["demo"]["n_current"] == 800 and not watched["models"]["demo"]["drift_detected"]


def test_drift_skips_what_it_cannot_check(api, home):
    from flows.drift import drift_flow
    from loopline.errors import ModelError

    cfg = tiny_config(home)
    with pytest.raises(ModelError):
        drift_flow(cfg, model="nope")
    skipped = drift_flow(cfg, model="nope", skip_unknown_model=True, return_state=True)
    assert skipped.name == "Skipped" and "not registered" in skipped.message
    assert skipped.result()["drift_detected"] is False
