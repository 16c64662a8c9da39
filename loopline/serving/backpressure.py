"""Backpressure: bounds on the work one server holds, and the answer past them.

Three bounds keep memory flat however hard clients push: scoring requests in flight
(`max_inflight_requests`, checked before the body is read, so a refused request costs a few microseconds
and no buffer), rows waiting for each model (`max_queue_rows`, in the micro-batcher) and shadow scorings
in flight (`max_shadow_tasks`). uvicorn's `limit_concurrency` (`max_connections`) sits far above them as a
last resort against a flood of idle connections (its own 503 is plain text).

Past a request bound the server answers at once `503` with `Retry-After` and a JSON error body, the
MLflow error shape with `error_code` TEMPORARILY_UNAVAILABLE, so a client backs off instead of timing out,
and the server serves what it admitted at full speed: when load drops, the next request is admitted. Past
the shadow bound the shadow call is skipped and counted; the champion's answer never waits for it.
"""

from __future__ import annotations

import orjson

from loopline.serving.metrics import ServingMetrics

UNAVAILABLE = "TEMPORARILY_UNAVAILABLE"


class Backpressure:
    def __init__(
        self,
        metrics: ServingMetrics,
        *,
        max_inflight_requests: int = 256,
        max_shadow_tasks: int = 64,
        retry_after_seconds: int = 1,
    ):
        self.metrics = metrics
        self.max_inflight_requests = max_inflight_requests
        self.max_shadow_tasks = max_shadow_tasks
        self.retry_after_seconds = retry_after_seconds
        self.inflight = 0
        self.shadow = 0

    # -- requests ------------------------------------------------------------------------------------
    def admit(self) -> bool:
        """Take a request slot; False (and counted) at the bound."""
        if self.inflight >= self.max_inflight_requests:
            self.metrics.rejected.labels("inflight").inc()
            return False
        self.inflight += 1
        return True

    def release(self) -> None:
        self.inflight -= 1

    def refused(self, message: str, bound: str | None = None) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        """The 503 body and headers; `bound` (queue) is counted here, `admit` counts its own."""
        if bound is not None:
            self.metrics.rejected.labels(bound).inc()
        body = orjson.dumps({"error_code": UNAVAILABLE, "message": message})
        headers = [
            (b"content-type", b"application/json"),
            (b"retry-after", str(self.retry_after_seconds).encode()),
        ]
        return body, headers

    # -- shadow scoring ------------------------------------------------------------------------------
    def admit_shadow(self) -> bool:
        if self.shadow >= self.max_shadow_tasks:
            self.metrics.shadow_skipped.labels("tasks").inc()
            return False
        self.shadow += 1
        self.metrics.shadow_in_flight.set(self.shadow)
        return True

    def release_shadow(self, _task=None) -> None:
        self.shadow -= 1
        self.metrics.shadow_in_flight.set(self.shadow)
