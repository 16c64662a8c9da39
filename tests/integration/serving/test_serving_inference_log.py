"""The inference log against real Delta tables, through the real app (in-process, real bundles): rows of a
shadow challenger with another contract and of a hot-swapped champion whose contract dropped a column
land; a table that cannot be written is retried, then dead-lettered with the error, and nothing is lost;
a flush whose commit landed before its failure was reported is not written twice."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from loopline.config import ServingConfig
from loopline.data.contracts import load_contract
from loopline.serving.inference_log import log_schema
from loopline.serving.router import CHALLENGER, CHAMPION
from tests.serving_support import AppHarness, contract_variant, demo_rows, make_bundle, payloads

pytestmark = pytest.mark.integration
FAST = {"poll_seconds": 0, "log_flush_seconds": 0.2, "log_retry_seconds": 0.1}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    """v1: the demo contract; v2: the demo contract without `note`, plus a nullable float `extra`."""
    root = tmp_path_factory.mktemp("log-bundles")
    variant = contract_variant(
        root, "demo-v2", drop=("note",), add={"extra": {"type": "float", "nullable": True}}
    )
    return {
        "1": make_bundle(root / "v1", seed=1),
        "2": make_bundle(root / "v2", seed=2, contract_path=variant),
    }


def _send(h: AppHarness, prefix: str, sizes: list[int], *, drop: tuple[str, ...] = ()) -> dict[str, int]:
    sent = {}
    for i, n in enumerate(sizes):
        frame = demo_rows(n, seed=50 + i).drop(columns=list(drop))
        resp = h.post(payloads(frame)["dataframe_split"], {"x-request-id": f"{prefix}-{i}"})
        assert resp.status_code == 200, resp.text
        sent[f"{prefix}-{i}"] = n
    return sent


def _wait(h: AppHarness, predicate, timeout: float = 20.0) -> None:
    """Run the app's event loop (shadow scorings live there) until the predicate holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for the inference log"
        h.run(asyncio.sleep(0.05))


def _metric(h: AppHarness, name: str) -> float:
    for line in h.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_rows_of_a_shadow_with_another_contract_and_of_a_swapped_champion_land(bundles, tmp_path):
    h = AppHarness(bundles, tmp_path, ServingConfig(shadow=True, **FAST), challenger=True)
    log = h.app.inference_log
    try:
        # v1 answers, v2 (no `note`, plus `extra`) shadows: the shadow takes the columns its contract names
        before = _send(h, "before", [3, 2, 4], drop=())
        _wait(h, lambda: log.written_rows == 2 * sum(before.values()))
        # hot swap: v2 becomes the champion (its contract dropped `note`), v1 shadows it
        h.run(h.app.manager.install(h.models["2"], CHAMPION))
        h.run(h.app.manager.install(h.models["1"], CHALLENGER))
        after = _send(h, "after", [2, 5], drop=("note",))
        _wait(h, lambda: log.written_rows == 2 * sum(before.values()) + 2 * sum(after.values()))
        assert log.alive and log.dropped_rows == 0 and log.deadletter_rows == 0
    finally:
        h.close()
    log_table = DeltaTable(h.lake.table_uri("predictions", "demo"))
    # the demo's 36 features put `_scored_at` past Delta's 32 columns of statistics: it has them all the same,
    # so a drift window skips files by time from the log
    assert "min._scored_at" in pa.table(log_table.get_add_actions(flatten=True)).column_names
    table = log_table.to_pandas()
    counts = table.groupby(["_role", "_model_version"]).size().to_dict()
    assert counts == {("champion", "1"): 9, ("shadow", "2"): 9, ("champion", "2"): 7, ("shadow", "1"): 7}
    assert {"note", "extra"} <= set(table.columns)  # the added column was merged into the table
    v2_rows = table[table["_model_version"] == "2"]
    assert v2_rows["note"].isna().all() and table["_prediction"].between(0, 1).all()
    assert table.groupby("_request_id").size().to_dict() == {
        **{k: 2 * n for k, n in before.items()},
        **{k: 2 * n for k, n in after.items()},
    }


def test_an_unwritable_table_is_retried_then_dead_lettered_and_nothing_is_lost(bundles, tmp_path):
    lake_root = tmp_path / "lake"
    blocker = lake_root / "predictions" / "demo"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("a file where the table's folder belongs: every write to predictions/demo fails")
    cfg = ServingConfig(log_write_attempts=2, **FAST)
    h = AppHarness(bundles, tmp_path, cfg)
    log = h.app.inference_log
    try:
        parked = _send(h, "parked", [1, 4, 2, 3])
        _wait(h, lambda: log.deadletter_rows == sum(parked.values()))
        assert _metric(h, "loopline_serving_inference_log_deadletter_rows_total") == 10
        assert _metric(h, "loopline_serving_inference_log_write_errors_total") >= 2
        assert _metric(h, "loopline_serving_inference_log_retries_total") >= 1
        assert log.written_rows == 0 and log.alive
        os.remove(blocker)  # the cause goes away: later flushes land in predictions/demo
        landed = _send(h, "landed", [2, 3])
        _wait(h, lambda: log.written_rows == sum(landed.values()))
    finally:
        h.close()
    served = {**parked, **landed}
    table = DeltaTable(h.lake.table_uri("predictions", "demo")).to_pandas()
    dead = DeltaTable(str(lake_root / "predictions_deadletter" / "demo")).to_pandas()
    logged = table.groupby("_request_id").size().to_dict()
    parked_rows = dead.groupby("_request_id").size().to_dict()
    assert logged == landed and parked_rows == parked  # each row once, in one table or the other
    assert sum(logged.values()) + sum(parked_rows.values()) == sum(served.values())
    assert (dead["_attempts"] == 2).all() and dead["_error"].str.len().gt(0).all()
    row = json.loads(dead["_row"].iloc[0])
    assert {"customer_id", "age", "_prediction", "_request_id"} <= set(row)


def test_a_flush_retried_after_its_commit_landed_is_written_once(bundles, tmp_path):
    """A real ambiguous failure: the commit lands, then its post-commit checkpoint cannot be written (a
    folder sits where the checkpoint file goes), so the write raises after committing."""
    lake_root = tmp_path / "lake"
    uri = str(lake_root / "predictions" / "demo")
    schema = log_schema(load_contract(bundles["1"] / "contract.yaml"))
    write_deltalake(
        uri, pa.Table.from_pylist([], schema=schema), configuration={"delta.checkpointInterval": "1"}
    )
    (Path(uri) / "_delta_log" / f"{1:020d}.checkpoint.parquet").mkdir()
    h = AppHarness(bundles, tmp_path, ServingConfig(**FAST))
    log = h.app.inference_log
    try:
        sent = _send(h, "ambiguous", [5])
        _wait(h, lambda: log.written_rows == 5)
        assert log.found_on_retry == 1 and log.write_failures == 1
        assert _metric(h, "loopline_serving_inference_log_commits_found_on_retry_total") == 1
    finally:
        h.close()
    table = DeltaTable(uri)
    assert table.to_pandas().groupby("_request_id").size().to_dict() == sent
    assert table.version() == 1 and table.transaction_version(log.app_id) == 1
