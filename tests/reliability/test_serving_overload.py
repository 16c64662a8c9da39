"""Overload: a real server (`python -m loopline.serving`, a registered model slowed to a known rate by its
factory, `slow_mlp`) with tiny bounds, sent 4x the rate it can serve on schedule (open loop). Every answer
is 200 or 503 with Retry-After and a JSON error, nothing else, no request times out, the server's memory
stays flat, and it serves again at once when the load drops."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import orjson
import pytest

from bench.overload import RssSampler, open_loop
from tests.reliability.conftest import rounds
from tests.serving_support import SLOW_MODEL_SECONDS, ServerProcess, demo_rows, payloads, shared_registry

pytestmark = pytest.mark.integration
BATCH_ROWS = 2  # rows per model call: with SLOW_MODEL_SECONDS per call, 40 one-row requests/s at best
RSS_GROWTH_LIMIT_MB = 64  # bounded queues: what the overload may add on top of the warmed-up server


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory):
    registry = shared_registry()
    srv = ServerProcess(
        "slowdemo",
        registry["home"],
        registry["tracking_uri"],
        *("--poll-seconds", "0", "--max-batch-size", str(BATCH_ROWS), "--max-wait-ms", "0"),
        *("--max-queue-rows", "4", "--max-inflight-requests", "6"),
        env={"LOOPLINE_LAKE_URI": str(tmp_path_factory.mktemp("overload-lake"))},
    )
    srv.wait_ready()
    yield srv
    srv.stop()


def test_four_times_the_servable_rate_gets_200_or_503_and_recovers_at_once(slow_server, reliability_report):
    url = f"{slow_server.url}/invocations"
    body = orjson.dumps(payloads(demo_rows(1, seed=4))["dataframe_split"])
    servable = BATCH_ROWS / SLOW_MODEL_SECONDS  # one-row requests per second, at best
    for _ in range(5):  # warm up: connections, allocator, the inference log's first commit
        assert httpx.post(url, content=body, headers={"content-type": "application/json"}).status_code == 200
    with RssSampler(slow_server.proc.pid) as rss:
        time.sleep(0.3)
        before_mb = rss.peak_mb()
        started = time.perf_counter()
        load = asyncio.run(open_loop(url, body, rate=4 * servable, seconds=rounds(3, 20), timeout_s=10))
        peak_mb = rss.peak_mb(since=started)
        after = asyncio.run(open_loop(url, body, rate=servable / 4, seconds=1.0))  # load drops
    statuses = load["statuses"]
    unexpected_5xx = load["other_5xx"] + load["bad_503"]
    reliability_report.add(
        "overload (tiny queue, slow model)",
        tries=load["sent"],
        unexpected_5xx=unexpected_5xx,
        note=(
            f"4x {servable:.0f} req/s: {statuses.get('200', 0)} x 200, {statuses.get('503', 0)} x 503 "
            f"(Retry-After + JSON), {load['timeouts']} timeouts, RSS +{peak_mb - before_mb:.1f} MB, "
            f"recovery: {after['ok']}/{after['sent']} 200 from {after['first_ok_s']} s"
        ),
    )
    assert set(statuses) <= {"200", "503"} and unexpected_5xx == 0, load
    assert statuses.get("200", 0) > 0 and statuses.get("503", 0) > 0, load
    assert load["timeouts"] == 0 and load["conn_errors"] == 0 and load["not_sent"] == 0, load
    assert peak_mb - before_mb < RSS_GROWTH_LIMIT_MB, (before_mb, peak_mb)
    assert after["statuses"] == {"200": after["sent"]}, after  # every request served once load drops
    metrics = httpx.get(f"{slow_server.url}/metrics").text
    refused = sum(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("loopline_serving_overload_rejections_total{")
    )
    assert refused == statuses["503"]


def test_a_503_under_load_matches_the_served_openapi_schema(slow_server):
    """What a schema fuzzer would see under load: the 503 (Retry-After, JSON error) is documented."""
    import schemathesis
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    payload = payloads(demo_rows(1, seed=5))["dataframe_split"]
    with ThreadPoolExecutor(16) as pool:
        answers = list(
            pool.map(
                lambda _: httpx.post(f"{slow_server.url}/invocations", json=payload, timeout=10), range(16)
            )
        )
    by_status = {r.status_code: r for r in answers}
    assert set(by_status) == {200, 503}, [r.status_code for r in answers]
    operation = schemathesis.openapi.from_url(f"{slow_server.url}/openapi.json")["/invocations"]["POST"]
    checks = [status_code_conformance, content_type_conformance, response_headers_conformance]
    for response in by_status.values():
        case = operation.Case(body=payload, media_type="application/json")
        case.validate_response(response, checks=[*checks, response_schema_conformance])
