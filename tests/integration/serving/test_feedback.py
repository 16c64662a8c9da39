"""Label feedback end to end, on a real server process and real Delta tables: labels posted for 1,000 scored
requests land in feedback/M once each, join predictions/M by (X-Request-Id, row), and give the live metric
that the metric function computes from the answers and labels directly; posting them again changes
nothing, another label corrects one; bad bodies are refused naming the field. `loopline feedback` loads a
CSV, rejects bad rows with line, field and reason (all counted, written to a file), and is idempotent too."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from deltalake import DeltaTable

from loopline.data.contracts import load_contract
from loopline.monitoring.live import live_metrics_text, live_performance
from loopline.monitoring.performance import compute_metric
from loopline.storage.lake import Lake
from tests.cli_support import run_cli
from tests.serving_support import DEMO_CONTRACT, ServerProcess, demo_rows, shared_registry

pytestmark = pytest.mark.integration
REQUESTS = 1000


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    lake_dir = tmp_path_factory.mktemp("feedback-lake")
    registry = shared_registry()
    srv = ServerProcess(
        "demo",
        registry["home"],
        registry["tracking_uri"],
        "--poll-seconds",
        "0",
        "--log-flush-seconds",
        "0.2",
        env={"LOOPLINE_LAKE_URI": str(lake_dir)},
    )
    srv.wait_ready()
    yield srv, Lake(root=str(lake_dir))
    srv.stop()


def _score(url: str) -> tuple[list[str], dict[str, list[float]]]:
    """REQUESTS scoring requests of 1 or 2 rows; the request ids the server answered with, and predictions."""
    frame = demo_rows(REQUESTS * 2, seed=11)
    ids, predictions, at = [], {}, 0
    with httpx.Client(base_url=url, timeout=10) as client:
        for i in range(REQUESTS):
            n = 1 + i % 2
            part = frame.iloc[at : at + n]
            at += n
            body = {"dataframe_split": {"columns": list(part.columns), "data": part.values.tolist()}}
            resp = client.post("/invocations", json=body)
            assert resp.status_code == 200, resp.text
            rid = resp.headers["x-request-id"]
            ids.append(rid)
            predictions[rid] = resp.json()["predictions"]
    assert len(set(ids)) == REQUESTS
    return ids, predictions


async def _post_all(url: str, bodies: list[dict]) -> list[httpx.Response]:
    """Concurrently, so the server's group commit gathers several requests into one MERGE."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        return await asyncio.gather(*(client.post("/feedback", json=b) for b in bodies))


def _rows(lake: Lake, kind_uri: str) -> int:
    return DeltaTable(kind_uri).to_pyarrow_table().num_rows


def _metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_labels_for_1000_requests_give_the_live_metric_and_land_once(served):
    srv, lake = served
    ids, predictions = _score(srv.url)
    rng = np.random.default_rng(5)
    labels = {rid: rng.integers(0, 2, size=len(predictions[rid])).tolist() for rid in ids}

    # the first 100 requests one body each ("labels" form), the rest as items in 3 batches, all at once
    bodies = [{"request_id": rid, "labels": labels[rid]} for rid in ids[:100]]
    items = [
        {"request_id": rid, "row": r, "label": lab} for rid in ids[100:] for r, lab in enumerate(labels[rid])
    ]
    bodies += [{"items": items[i : i + 500]} for i in range(0, len(items), 500)]
    answers = asyncio.run(_post_all(srv.url, bodies))
    assert [a.status_code for a in answers] == [200] * len(bodies), answers[0].text
    n_rows = sum(len(v) for v in labels.values())
    assert sum(a.json()["accepted"] for a in answers) == n_rows == 1500
    feedback_uri = lake.uri("feedback", "demo")
    assert _rows(lake, feedback_uri) == n_rows

    # the inference log writes every 0.2 s
    deadline = time.monotonic() + 20
    while True:
        try:
            if _rows(lake, lake.table_uri("predictions", "demo")) >= n_rows:
                break
        except Exception:  # not created yet
            pass
        assert time.monotonic() < deadline, "predictions/demo did not get every row"
        time.sleep(0.1)

    contract = load_contract(DEMO_CONTRACT)
    y = np.array([lab for rid in ids for lab in labels[rid]], dtype=np.float64)
    p = np.array([v for rid in ids for v in predictions[rid]], dtype=np.float64)
    for metric in ("roc_auc", "accuracy", "log_loss"):
        live = live_performance(lake, "demo", contract, metric=metric, windows_hours=[1.0])
        assert live["labelled_rows"] == n_rows
        version = live["versions"]["1"]
        assert version["all"]["rows"] == version["1h"]["rows"] == n_rows
        assert version["all"]["value"] == pytest.approx(compute_metric(metric, "binary", y, p), abs=1e-12)
    assert 'loopline_live_metric{metric="log_loss",model="demo",version="1",window="1h"}' in (
        live_metrics_text(live)
    )

    # the same labels again: 200, nothing new in the table; another label for one key: a correction
    again = asyncio.run(_post_all(srv.url, bodies[:3] + [{"items": items[:700]}]))
    assert {a.status_code for a in again} == {200}
    assert _rows(lake, feedback_uri) == n_rows
    assert (
        _metric(srv.url, 'loopline_serving_feedback_rows_total{outcome="unchanged"}')
        == sum(len(labels[r]) for r in ids[:3]) + 700
    )
    first = items[0]
    fixed = asyncio.run(_post_all(srv.url, [{"items": [{**first, "label": 1 - first["label"]}]}]))
    assert fixed[0].status_code == 200
    table = DeltaTable(feedback_uri).to_pyarrow_table().to_pylist()
    assert len(table) == n_rows
    row = next(r for r in table if (r["_request_id"], r["_row_index"]) == (first["request_id"], first["row"]))
    assert row["label"] == 1 - first["label"]
    assert _metric(srv.url, 'loopline_serving_feedback_rows_total{outcome="updated"}') == 1

    # refused, naming the field; nothing lands
    bad = httpx.post(f"{srv.url}/feedback", json={"items": [{"request_id": ids[0], "row": 0, "label": 2}]})
    assert bad.status_code == 422 and bad.json()["fields"][0]["field"] == "items[0].label", bad.text
    assert httpx.post(f"{srv.url}/feedback", json={"request_id": ids[0]}).status_code == 400
    # a row index past int64 (JSON 3.3e19 parses as a whole float): named, not a 500 (schemathesis found it)
    huge = b'{"items": [{"request_id": "%s", "row": 32589158477190044731, "label": 1}]}' % ids[0].encode()
    bad = httpx.post(f"{srv.url}/feedback", content=huge, headers={"content-type": "application/json"})
    assert bad.status_code == 422 and "beyond the largest row index" in bad.text, bad.text
    assert (
        httpx.post(f"{srv.url}/feedback", content=b"x", headers={"content-type": "text/csv"}).status_code
        == 415
    )
    assert _rows(lake, feedback_uri) == n_rows


def test_bulk_cli_lands_good_rows_once_and_reports_every_bad_one(tmp_path):
    from loopline.data.contract_registry import register_contract

    register_contract(Lake(root=str(tmp_path / "lake")), load_contract(DEMO_CONTRACT))
    good = [("r1", "0", "1"), ("r1", "1", "0"), ("r2", "0", "1"), ("r3", "0", "0"), ("r3", "0", "1")]
    bad = [("r4", "-1", "1"), ("r5", "0", "2"), ("", "0", "1"), ("r6", "x", "1"), ("r7", "0", "")]
    source = tmp_path / "labels.csv"
    source.write_text("request_id,row,label,note\n" + "".join(f"{a},{b},{c},n\n" for a, b, c in good + bad))

    first = run_cli("feedback", "--model", "demo", "--source", str(source), "--json", home=tmp_path)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout.strip().splitlines()[-1])
    # r3/0 twice in one file: the last label wins, one row
    assert (report["rows"], report["inserted"], report["rejected"]) == (10, 4, 5)
    assert report["ignored_columns"] == ["note"]
    found = {(e["line"], e["field"]) for e in report["examples"]}
    assert found == {(7, "row"), (8, "label"), (9, "request_id"), (10, "row"), (11, "label")}
    assert len(Path(report["rejected_file"]).read_text().splitlines()) == 1 + 5
    table = DeltaTable(str(tmp_path / "lake" / "feedback" / "demo")).to_pyarrow_table()
    assert table.num_rows == 4 and table.column("label").to_pylist().count(1) == 3

    again = run_cli("feedback", "--model", "demo", "--source", str(source), "--json", home=tmp_path)
    report = json.loads(again.stdout.strip().splitlines()[-1])
    assert (report["inserted"], report["updated"], report["unchanged"]) == (0, 0, 4)

    missing = tmp_path / "nolabel.csv"
    missing.write_text("request_id,row\nr1,0\n")
    failed = run_cli("feedback", "--model", "demo", "--source", str(missing), home=tmp_path)
    assert failed.returncode == 2
    assert "nolabel.csv" in failed.stderr and "label" in failed.stderr and "Traceback" not in failed.stderr
