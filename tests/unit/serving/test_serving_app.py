"""The ASGI app in-process with real bundles: status codes, fuzzed bad input (only 4xx), reload token,
split by version header over 2,000 requests, shadow, metrics, and the inference log after a stop."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopline.config import ServingConfig
from loopline.serving.inputs import to_frame
from tests.serving_support import AppHarness as Harness
from tests.serving_support import close, demo_rows, make_bundle, payloads


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    return {"1": make_bundle(root / "v1", seed=1), "2": make_bundle(root / "v2", seed=2)}


@pytest.fixture
def harness(bundles, tmp_path):
    h = Harness(bundles, tmp_path, ServingConfig(poll_seconds=0, inference_log=False))
    yield h
    h.close()


def test_all_formats_answer_the_predictors_predictions(harness):
    frame = demo_rows(7, seed=11)
    model = harness.models["1"]
    rows = model.checker.check(
        __import__("loopline.serving.protocol", fromlist=["x"]).Columns(
            {c: frame[c].tolist() for c in frame.columns}, 7, "t"
        )
    )
    # the bundle's own pandas path (what the pyfunc runs)
    expected = model.predictor.predict(to_frame(rows))
    for name, body in payloads(frame).items():
        resp = harness.post(body)
        assert resp.status_code == 200, (name, resp.text)
        assert resp.headers["x-model-version"] == "1"
        got = resp.json()["predictions"]
        assert np.allclose(got, expected, atol=1e-6, rtol=0), name


def test_operational_routes(harness):
    assert harness.get("/ping").status_code == 200
    assert harness.get("/health").json() == {"status": "ok", "model": "demo", "version": "1"}
    version = harness.get("/version").json()
    assert version["model"] == "demo" and version["version"] == "1" and version["loaded_at"]
    harness.post(payloads(demo_rows(3))["dataframe_records"])
    harness.post(b"{oops")
    metrics = harness.get("/metrics").text
    for name in (
        'loopline_serving_requests_total{code="200",route="invocations"} 1.0',
        'loopline_serving_requests_total{code="400",route="invocations"} 1.0',
        'loopline_serving_rows_total{role="champion",version="1"} 3.0',
        "loopline_serving_request_latency_seconds_bucket",
        "loopline_serving_batch_rows_bucket",
        "loopline_serving_queue_rows",
        "loopline_serving_inference_log_dropped_rows_total",
    ):
        assert name in metrics, name
    assert harness.get("/openapi.json").json()["paths"]["/invocations"]["post"]
    assert harness.get("/nope").status_code == 404
    assert harness.run(harness.client.put("/invocations")).status_code == 405


def test_bad_requests_get_the_right_4xx(harness):
    good = payloads(demo_rows(2))["dataframe_records"]
    assert harness.post(b"not json").status_code == 400
    assert harness.post({"rows": []}).status_code == 400
    assert harness.post(good, headers={"content-type": "text/csv"}).status_code == 415
    bad = {"dataframe_records": [{**good["dataframe_records"][0], "age": 7, "segment": "galaxy", "bogus": 1}]}
    resp = harness.post(bad)
    assert resp.status_code == 422
    assert {f["field"] for f in resp.json()["fields"]} == {"age", "segment", "bogus"}
    big = b'{"instances": [' + b"1," * (10 * 1024 * 1024) + b"1]}"
    assert harness.post(big).status_code == 413
    assert harness.post({"instances": []}).json() == {"predictions": []}


json_leaf = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
COLUMNS = ["age", "f00", "f01", "segment", "channel", "signup_at", "note", "customer_id", "churned", "zzz"]
row = st.dictionaries(st.sampled_from(COLUMNS), json_value, max_size=len(COLUMNS))
documents = st.one_of(
    json_value,
    st.fixed_dictionaries({"dataframe_records": st.lists(row, max_size=3)}),
    st.fixed_dictionaries({"instances": st.one_of(st.lists(row, max_size=3), json_value)}),
    st.fixed_dictionaries(
        {
            "inputs": st.one_of(
                st.dictionaries(st.sampled_from(COLUMNS), st.lists(json_value, max_size=3)), json_value
            )
        }
    ),
    st.fixed_dictionaries(
        {
            "dataframe_split": st.fixed_dictionaries(
                {
                    "columns": st.lists(st.sampled_from(COLUMNS), max_size=4),
                    "data": st.lists(st.lists(json_value, max_size=4), max_size=3),
                }
            )
        }
    ),
)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(documents)
def test_fuzzed_payloads_never_get_a_5xx(harness, doc):
    resp = harness.post(json.dumps(doc).encode())  # the stdlib writes ints of any size
    assert resp.status_code in (200, 400, 422), resp.text
    if resp.status_code == 422:
        assert resp.json()["fields"]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=64))
def test_fuzzed_bytes_never_get_a_5xx(harness, body):
    assert harness.post(body).status_code in (200, 400, 422)


def test_split_ratio_by_version_header_over_2000_requests(bundles, tmp_path):
    h = Harness(
        bundles,
        tmp_path,
        ServingConfig(poll_seconds=0, inference_log=False, challenger_weight=0.25),
        challenger=True,
    )
    try:
        body = orjson.dumps(payloads(demo_rows(1))["instances"])
        versions = [h.post(body).headers["x-model-version"] for _ in range(2000)]
        assert abs(versions.count("2") / 2000 - 0.25) < 0.045  # 4 binomial sd
        # a request key is sticky
        keyed = {
            h.post(body, {"x-request-key": f"user-{i % 20}"}).headers["x-model-version"] + f"/{i % 20}"
            for i in range(100)
        }
        assert len(keyed) == 20
        metrics = h.get("/metrics").text
        assert 'loopline_serving_version_requests_total{role="challenger",version="2"}' in metrics
        assert h.get("/version").json()["challenger"]["version"] == "2"
    finally:
        h.close()


def test_shadow_scores_the_challenger_without_answering_with_it(bundles, tmp_path):
    h = Harness(
        bundles, tmp_path, ServingConfig(poll_seconds=0, shadow=True, log_flush_seconds=60), challenger=True
    )
    try:
        frame = demo_rows(4, seed=5)
        responses = [h.post(payloads(frame)["dataframe_split"], {"x-request-id": f"r{i}"}) for i in range(5)]
        assert {r.headers["x-model-version"] for r in responses} == {"1"}
    finally:
        h.close()
    table = h.lake.table_uri("predictions", "demo")
    from deltalake import DeltaTable

    log = DeltaTable(table).to_pandas()
    assert sorted(log.groupby("_role").size().to_dict().items()) == [("champion", 20), ("shadow", 20)]
    assert set(log.loc[log["_role"] == "shadow", "_model_version"]) == {"2"}


def test_inference_log_holds_every_scored_row_after_stop(bundles, tmp_path):
    h = Harness(bundles, tmp_path, ServingConfig(poll_seconds=0, log_flush_seconds=0.3, log_flush_rows=150))
    sent: dict[str, int] = {}
    try:

        async def burst():
            calls = []
            for i in range(60):
                frame = demo_rows(1 + i % 5, seed=i)
                sent[f"req-{i}"] = len(frame)
                body = orjson.dumps(payloads(frame)["dataframe_records"])
                calls.append(
                    h.client.post(
                        "/invocations",
                        content=body,
                        headers={"x-request-id": f"req-{i}", "content-type": "application/json"},
                    )
                )
            return await asyncio.gather(*calls)

        assert all(r.status_code == 200 for r in h.run(burst()))
    finally:
        h.close()
    from deltalake import DeltaTable

    log = DeltaTable(h.lake.table_uri("predictions", "demo")).to_pandas()
    assert log.groupby("_request_id").size().to_dict() == sent
    # each request's rows keep their own places 0..n-1, however requests were batched together
    assert all(sorted(g) == list(range(sent[k])) for k, g in log.groupby("_request_id")["_row_index"])
    assert log["customer_id"].notna().all() and log["_prediction"].between(0, 1).all()
    assert h.app.inference_log.dropped_rows == 0


def test_a_full_log_queue_drops_and_counts_instead_of_blocking(bundles, tmp_path):
    cfg = ServingConfig(poll_seconds=0, log_queue_rows=1000, log_flush_seconds=3600, log_flush_rows=10**9)
    h = Harness(bundles, tmp_path, cfg)
    try:
        body = orjson.dumps(payloads(demo_rows(400))["dataframe_split"])
        assert all(h.post(body).status_code == 200 for _ in range(4))  # 1600 rows, room for 1000
        assert h.app.inference_log.dropped_rows == 800
        assert "loopline_serving_inference_log_dropped_rows_total 800.0" in h.get("/metrics").text
    finally:
        h.close()


def test_reload_needs_the_token(bundles, tmp_path):
    h = Harness(bundles, tmp_path, ServingConfig(poll_seconds=0, inference_log=False), token="s3cret")
    try:
        assert h.run(h.client.post("/reload")).status_code == 401
        assert h.run(h.client.post("/reload", headers={"x-reload-token": "nope"})).status_code == 401
        ok = h.run(h.client.post("/reload", headers={"authorization": "Bearer s3cret"}))
        assert ok.status_code == 200 and ok.json()["version"] == "1"
    finally:
        h.close()
    h = Harness(bundles, tmp_path / "b", ServingConfig(poll_seconds=0, inference_log=False), token="")
    try:
        assert h.run(h.client.post("/reload", headers={"x-reload-token": ""})).status_code == 403
    finally:
        h.close()


def test_a_bad_request_in_a_micro_batch_gets_its_own_422_and_the_others_are_scored(harness):
    """Requests are checked together per micro-batch; one that breaks the contract must still get a 422
    naming its own row and field, and the rest of the batch the predictions they get when sent alone."""
    from loopline.serving.protocol import RequestError, parse_body

    frames = [demo_rows(3, seed=s) for s in (21, 22, 23, 24)]
    bodies = [orjson.dumps(payloads(f)["dataframe_split"]) for f in frames]
    bad = payloads(frames[2])["dataframe_split"]
    bad["dataframe_split"]["data"][1][bad["dataframe_split"]["columns"].index("age")] = 7  # min is 18
    bodies[2] = orjson.dumps(bad)
    alone = [harness.post(b) for b in bodies]  # one request at a time
    assert [r.status_code for r in alone] == [200, 200, 422, 200]
    slot = harness.app.router.champion
    calls = []
    score = slot.batcher._score
    slot.batcher._score = lambda rows: calls.append(rows.n_rows) or score(rows)

    async def one_batch():  # submitted in one event-loop turn: one check, one model call
        return await asyncio.gather(
            *[slot.batcher.submit(parse_body(b), (f"r{i}", "champion")) for i, b in enumerate(bodies)],
            return_exceptions=True,
        )

    together = harness.run(one_batch())
    assert calls == [9]  # the three good requests' rows, in one model call
    error = together[2]
    assert isinstance(error, RequestError) and error.status == 422
    assert error.fields == [{"field": "age", "error": "value is below the minimum 18", "rows": [1]}]
    assert orjson.loads(error.body()) == alone[2].json()
    for i in (0, 1, 3):  # the same to float32 precision (a matmul's rounding depends on its batch size)
        assert close(together[i], alone[i].json()["predictions"])

    async def over_http():  # the same through the app, concurrently
        return await asyncio.gather(*[harness.client.post("/invocations", content=b) for b in bodies])

    responses = harness.run(over_http())
    assert [r.status_code for r in responses] == [200, 200, 422, 200]
    assert responses[2].json() == alone[2].json()
    for i in (0, 1, 3):
        assert close(responses[i].json()["predictions"], alone[i].json()["predictions"])
