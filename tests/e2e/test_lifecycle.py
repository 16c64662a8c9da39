"""The lifecycle flow twice, as `make demo` runs it (smaller): a first batch trained, promoted and served;
then a drifted batch: drift detected against the champion, retrained, promoted over it, hot-swapped."""

from __future__ import annotations

import pytest

from loopline.config import load_config
from loopline.release import deploy
from tests.serving_support import free_port

pytestmark = pytest.mark.e2e

SMALL = [
    "synthetic.rows=4000",
    "synthetic.bad_fraction=0.01",
    "training.max_steps=120",
    "evaluation.bootstrap_samples=200",
]
DRIFTED = [
    "synthetic.seed=1",
    "synthetic.id_offset=1000000",
    "synthetic.drift_columns=[f00,f03,f06,f09,f12,segment]",
    "synthetic.drift_mean_shift=1.0",
    "synthetic.drift_category_mix=0.5",
]


def test_the_loop_twice(prefect_api, home):
    from flows.lifecycle import lifecycle_flow

    port = free_port()
    base = [*SMALL, f"home={home}", f"serving.port={port}", "serving.poll_seconds=3600"]
    try:
        first = lifecycle_flow(config=load_config(overrides=base))
        (batch,) = first["ingest"]
        assert batch["accepted"] and batch["rows_quarantined"] > 0
        assert first["drift"].get("skipped")  # no champion yet
        assert first["promote"]["promoted"] and first["champion_version"] == 1
        assert first["deploy"]["started"] and first["deploy"]["servers"][0]["version"] == "1"

        second = lifecycle_flow(config=load_config(overrides=[*base, *DRIFTED]))
        assert second["drift"]["drift_detected"] and second["drift"]["event_emitted"]
        assert {"f00", "f03"} <= set(second["drift"]["drifted_features"])
        assert second["features"]["new_batches"] == 1 and second["train"]["model_version"] == "2"
        promote = second["promote"]
        assert promote["candidate_version"] == 2 and promote["reason"]
        served = deploy.http_json(f"http://127.0.0.1:{port}/version")["version"]
        assert served == str(promote["champion_version"])

        from loopline.monitoring.status import collect_status

        status = collect_status(load_config(overrides=base), model="demo")
        assert status["champion_version"] == promote["champion_version"] and status["latest_version"] == 2
        assert status["last_drift"]["drift_detected"] is True and status["last_runs"]
        assert status["datasets"]["demo"]["batches_accepted"] == 2
    finally:
        deploy.stop_all_servers(str(home))
