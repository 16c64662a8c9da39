"""`event_emitted` is true only when the Prefect API accepted the event, on real servers: the session's
Prefect API (accepts), a port nobody listens on (unreachable), and a reverse proxy in front of the same API
that answers 500 to `POST /api/events` and forwards everything else (artifacts and logs still work, events
do not). A refused emit is one warning without a traceback, and never fails the stage."""

from __future__ import annotations

import contextvars
import http.client
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import httpx
import numpy as np
import pandas as pd
import pytest

from loopline.config import LifecycleConfig
from tests.conftest import free_port
from tests.reliability.conftest import rounds

pytestmark = pytest.mark.integration
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "content-length"}


class EventsDownProxy:
    """Forwards every request to the Prefect API, except `POST /api/events`: 500, counted in `refused`."""

    def __init__(self, upstream_api: str, status: int = 500, stall_s: float = 0.0):
        """`status` is the refusal's (503 comes with Retry-After: 0, so a client retries at once);
        `stall_s`: wait that long before answering (a stalled API)."""
        parts = urlsplit(upstream_api)
        self.host, self.port, self.refused = parts.hostname, parts.port, 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.command == "POST" and self.path.split("?")[0].rstrip("/") == "/api/events":
                    proxy.refused += 1
                    time.sleep(stall_s)
                    headers = {"Content-Type": "application/json"}
                    if status == 503:
                        headers["Retry-After"] = "0"
                    return self._reply(status, headers, b'{"detail":"events down"}')
                upstream = http.client.HTTPConnection(proxy.host, proxy.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                upstream.request(self.command, self.path, body=body or None, headers=headers)
                resp = upstream.getresponse()
                data = resp.read()
                upstream.close()
                self._reply(
                    resp.status, {k: v for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP}, data
                )

            def _reply(self, status: int, headers: dict[str, str], data: bytes) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/api"

    def __enter__(self) -> EventsDownProxy:
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def api_at(url: str) -> Iterator[None]:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield


def events_of(api: str, resource_id: str, wait_s: float) -> list[dict]:
    """The stored events of a resource, waiting up to `wait_s` for the first (the server stores them
    asynchronously after its 204)."""
    body = {"filter": {"resource": {"id": [resource_id]}}, "limit": 50}
    deadline = time.monotonic() + wait_s
    while True:
        found = httpx.post(f"{api}/events/filter", json=body, timeout=30).json()["events"]
        if found or time.monotonic() >= deadline:
            return found
        time.sleep(0.25)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def loopline_warnings() -> Iterator[list[logging.LogRecord]]:
    """Warnings of the `loopline` logger (on the logger itself: Prefect reconfigures the root's handlers)."""
    handler, logger = Records(), logging.getLogger("loopline")
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)


def test_emit_is_true_only_when_the_api_accepted_the_event(
    prefect_api, loopline_warnings, reliability_report
):
    from tasks.common import emit

    tries = rounds(2, 20)
    resource = f"loopline.model.emit-{uuid.uuid4().hex[:8]}"
    with api_at(prefect_api):
        assert [emit("loopline.test.accepted", resource, {"i": i}) for i in range(tries)] == [True] * tries
    stored = events_of(prefect_api, resource, wait_s=15)
    assert sorted(e["payload"]["i"] for e in stored) == list(range(tries))

    claims = {}
    unreachable = f"http://127.0.0.1:{free_port()}/api"  # bound and closed again: nobody listens there
    with api_at(unreachable):
        claims["unreachable"] = [emit("loopline.test.lost", resource + "-u", {"i": i}) for i in range(tries)]
    with EventsDownProxy(prefect_api) as proxy, api_at(proxy.url):
        claims["500"] = [emit("loopline.test.lost", resource + "-r", {"i": i}) for i in range(tries)]
    assert proxy.refused >= tries  # the requests reached a server, which refused them
    assert claims == {"unreachable": [False] * tries, "500": [False] * tries}
    assert (
        events_of(prefect_api, resource + "-u", 0) == [] and events_of(prefect_api, resource + "-r", 0) == []
    )

    warnings = [
        r for r in loopline_warnings if r.getMessage().startswith("could not emit loopline.test.lost")
    ]
    assert len(warnings) == 2 * tries and all(r.exc_info is None for r in warnings)  # no tracebacks
    assert any("ConnectError" in r.getMessage() for r in warnings)
    assert any("500" in r.getMessage() for r in warnings)
    for fault, claimed in claims.items():
        reliability_report.add(
            f"Prefect API {'unreachable' if fault == 'unreachable' else 'answers 500 to POST /events'} on emit",
            tries=tries,
            lost=0,
            note=f"event_emitted true for {sum(claimed)} of {tries} refused events",
        )


def test_emit_inside_a_run_keeps_its_own_retry_and_timeout_bounds(prefect_api, monkeypatch):
    """Inside a flow run emit reuses the run's API client (cheaper than a client per event), and still
    applies its own bounds: EMIT_MAX_RETRIES retries of a retryable refusal (Prefect's default is 5), and
    EMIT_TIMEOUT_SECONDS per request against a stalled API (Prefect's default is 60 s)."""
    from prefect import flow

    import tasks.common as common

    @flow(name="emit-bounds")
    def emitting(resource: str) -> bool:
        return common.emit("loopline.test.bounded", resource, {})

    with EventsDownProxy(prefect_api, status=503) as proxy, api_at(proxy.url):
        assert emitting("loopline.model.bounds-503") is False
    assert proxy.refused == common.EMIT_MAX_RETRIES + 1

    monkeypatch.setattr(common, "EMIT_TIMEOUT_SECONDS", 0.3)
    monkeypatch.setattr(common, "EMIT_MAX_RETRIES", 0)
    monkeypatch.setattr(common, "_emit_settings_cache", [None, None])
    finished: list[bool] = []
    with EventsDownProxy(prefect_api, stall_s=30) as proxy, api_at(proxy.url):
        context = contextvars.copy_context()  # the proxy's API URL, in the thread too
        worker = threading.Thread(
            target=context.run, args=(lambda: finished.append(emitting("loopline.model.bounds-stall")),)
        )
        worker.start()
        worker.join(timeout=25)  # with Prefect's 60 s timeout it would still be waiting
        assert finished == [False] and proxy.refused == 1


def _drift_report() -> dict:
    from loopline.monitoring import build_reference_profile, detect_drift

    rng = np.random.default_rng(7)
    reference = pd.DataFrame({"a": rng.normal(0, 1, 600), "b": rng.normal(0, 1, 600)})
    current = pd.DataFrame({"a": rng.normal(3, 1, 600), "b": rng.normal(3, 1, 600)})
    report = detect_drift(build_reference_profile(reference, ["a", "b"], []), current).to_dict()
    assert report["drift_detected"]
    return report


def test_drift_says_event_emitted_false_when_the_api_refuses_the_event(prefect_api, home):
    """report_drift (the drift flow's last task): artifacts and the verdict land, the event is refused,
    so the result and the verdict row say event_emitted false; with the API accepting, true."""
    from loopline.monitoring.verdicts import last_drift_verdict
    from tasks.common import lake_for
    from tasks.drift import report_drift

    cfg = LifecycleConfig(home=str(home))
    model = f"drift-{uuid.uuid4().hex[:8]}"
    champion = {"model": model, "version": "1", "bundle_dir": str(home), "dataset": "demo"}
    window = {"kind": "file", "file": "x.csv", "needs_scoring": True, "description": "file x.csv"}
    report = _drift_report()

    with EventsDownProxy(prefect_api) as proxy, api_at(proxy.url):
        refused = report_drift.fn(cfg, champion, report, window)
    assert proxy.refused >= 1 and refused is False
    assert last_drift_verdict(lake_for(cfg), model)["event_emitted"] is False
    assert events_of(prefect_api, f"loopline.model.{model}", 0) == []

    with api_at(prefect_api):
        accepted = report_drift.fn(cfg, champion, report, window)
    assert accepted is True and last_drift_verdict(lake_for(cfg), model)["event_emitted"] is True
    (event,) = events_of(prefect_api, f"loopline.model.{model}", wait_s=15)
    assert event["event"] == "loopline.drift.detected" and event["payload"]["model_version"] == "1"
