"""Backpressure in the real app (in-process, real bundles): past the in-flight bound and past a model's
queue bound a request gets 503 with Retry-After and a JSON error at once, the next one after the burst is
served; past the shadow bound a shadow scoring is skipped and counted while the champion answers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from loopline.config import ServingConfig
from tests.serving_support import AppHarness, demo_rows, make_bundle, payloads


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bp-bundles")
    return {"1": make_bundle(root / "v1", seed=1), "2": make_bundle(root / "v2", seed=2)}


def _burst(h: AppHarness, n: int, rows: int) -> list:
    body = orjson.dumps(payloads(demo_rows(rows, seed=3))["dataframe_split"])

    async def go():
        return await asyncio.gather(
            *[
                h.client.post("/invocations", content=body, headers={"content-type": "application/json"})
                for _ in range(n)
            ]
        )

    return h.run(go())


def _metric(h: AppHarness, line_start: str) -> float:
    found = [ln for ln in h.get("/metrics").text.splitlines() if ln.startswith(line_start)]
    return float(found[0].split()[-1]) if found else 0.0


def _check_refusals(responses) -> int:
    refused = [r for r in responses if r.status_code == 503]
    assert {r.status_code for r in responses} <= {200, 503}
    for r in refused:
        assert r.headers["retry-after"] == "1" and r.headers["content-type"] == "application/json"
        assert r.json()["error_code"] == "TEMPORARILY_UNAVAILABLE" and r.json()["message"]
    return len(refused)


@pytest.mark.parametrize(
    ("bound", "cfg", "rows"),
    [
        ("inflight", {"max_inflight_requests": 2}, 1),
        ("queue", {"max_queue_rows": 4, "inline_max_rows": 0}, 3),
    ],
)
def test_past_a_bound_requests_get_503_with_retry_after_and_the_next_is_served(
    bundles, tmp_path, bound, cfg, rows
):
    h = AppHarness(bundles, tmp_path, ServingConfig(poll_seconds=0, inference_log=False, **cfg))
    try:
        responses = _burst(h, 12, rows)
        refused = _check_refusals(responses)
        assert 0 < refused < 12
        assert _metric(h, f'loopline_serving_overload_rejections_total{{bound="{bound}"}}') == refused
        assert _metric(h, 'loopline_serving_requests_total{code="503",route="invocations"}') == refused
        assert h.post(payloads(demo_rows(rows))["instances"]).status_code == 200  # recovered at once
    finally:
        h.close()


def test_past_the_shadow_bound_a_shadow_is_skipped_and_counted(bundles, tmp_path):
    cfg = ServingConfig(poll_seconds=0, inference_log=False, shadow=True, max_shadow_tasks=1)
    h = AppHarness(bundles, tmp_path, cfg, challenger=True)
    try:
        responses = _burst(h, 8, 2)
        assert [r.status_code for r in responses] == [200] * 8
        assert {r.headers["x-model-version"] for r in responses} == {"1"}
        h.run(asyncio.sleep(0.2))  # the admitted shadow scoring finishes
        skipped = _metric(h, 'loopline_serving_shadow_skipped_total{bound="tasks"}')
        shadowed = _metric(h, 'loopline_serving_version_requests_total{role="shadow",version="2"}')
        assert skipped >= 1 and skipped + shadowed == 8
        assert _metric(h, "loopline_serving_shadow_in_flight") == 0
    finally:
        h.close()


def test_openapi_documents_every_answer(bundles, tmp_path):
    h = AppHarness(bundles, tmp_path, ServingConfig(poll_seconds=0, inference_log=False))
    try:
        doc = h.get("/openapi.json").json()
        invocations = doc["paths"]["/invocations"]["post"]["responses"]
        assert set(invocations) == {"200", "400", "413", "415", "422", "500", "503"}
        assert invocations["503"]["headers"]["Retry-After"]["required"] is True
        assert set(doc["paths"]["/ping"]["get"]["responses"]) == {"200", "503"}
        refused = h.run(h.client.delete("/invocations"))
        assert refused.status_code == 405 and refused.headers["allow"] == "POST"
    finally:
        h.close()
