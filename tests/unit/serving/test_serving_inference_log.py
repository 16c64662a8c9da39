"""The inference-log writer on a real local Delta lake: rows that no table can hold (a model that answered
too few predictions) go to the dead-letter table with the error, the rows beside them still land, and the
writer thread lives on."""

from __future__ import annotations

import time

import numpy as np
from deltalake import DeltaTable

from loopline.data.contracts import load_contract
from loopline.serving.inference_log import InferenceLog
from loopline.serving.inputs import InputChecker
from loopline.serving.protocol import Columns
from loopline.storage.lake import Lake
from tests.serving_support import DEMO_CONTRACT, demo_rows


def test_rows_that_cannot_be_built_are_dead_lettered_and_the_writer_lives_on(tmp_path):
    contract = load_contract(DEMO_CONTRACT)
    frame = demo_rows(3, seed=9)
    rows = InputChecker(contract).check(Columns({c: frame[c].tolist() for c in frame.columns}, 3, "t"))
    lake = Lake(root=str(tmp_path / "lake"))
    log = InferenceLog(lake, "demo", contract, max_queue_rows=1000, flush_rows=10**6, flush_seconds=0.1)
    log.start()
    try:
        log.append(rows, np.full(2, 0.5), version="1", role="champion", request_id="too-few")
        log.append(rows, np.full(3, 0.5), version="1", role="champion", request_id="fine")
        deadline = time.monotonic() + 20
        while not (log.deadletter_rows == 3 and log.written_rows == 3):
            assert time.monotonic() < deadline, (log.deadletter_rows, log.written_rows)
            time.sleep(0.05)
        assert log.alive and log.queued_rows == 0
    finally:
        log.stop()
    logged = DeltaTable(lake.table_uri("predictions", "demo")).to_pandas()
    dead = DeltaTable(lake.uri("predictions_deadletter", "demo")).to_pandas()
    assert set(logged["_request_id"]) == {"fine"} and len(logged) == 3
    assert set(dead["_request_id"]) == {"too-few"} and len(dead) == 3
    assert dead["_error"].str.contains("length").all() and (dead["_attempts"] == 0).all()


def test_the_delta_writer_is_imported_when_the_log_starts_not_at_the_first_flush(tmp_path):
    """Importing deltalake takes ~0.3 s holding the GIL: at the first flush that stalls live requests."""
    import subprocess
    import sys

    script = f"""
import sys
from loopline.data.contracts import load_contract
from loopline.serving.inference_log import InferenceLog
from loopline.storage.lake import Lake
log = InferenceLog(Lake(root={str(tmp_path / "lake")!r}), "demo", load_contract({str(DEMO_CONTRACT)!r}),
                   max_queue_rows=1000, flush_rows=10**6, flush_seconds=3600)
before = "deltalake" in sys.modules
log.start()
print(before, "deltalake" in sys.modules)
log.stop()
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "True"]
