"""Prometheus metrics of one serving process (`GET /metrics`), on a registry of its own.

Names follow Prometheus conventions (`_total` counters, `_seconds` and `_rows` histograms). Per-version
series carry `version` and `role` (champion, challenger, shadow) so a canary's error rate and latency can be
compared with the champion's from the same scrape.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# latency buckets from 0.5 ms (one warm in-process request) to 10 s (a stalled model)
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class ServingMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        disable_created_metrics()  # `_created` series double the scrape and nobody graphs them
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "loopline_serving_requests_total",
            "HTTP requests by route and status code",
            ["route", "code"],
            registry=r,
        )
        self.errors = Counter(
            "loopline_serving_errors_total",
            "requests that failed, by reason (bad_json, bad_format, contract, too_large, model, ...)",
            ["reason"],
            registry=r,
        )
        self.latency = Histogram(
            "loopline_serving_request_latency_seconds",
            "scoring request latency (body read to response), by model version and role",
            ["version", "role"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.version_requests = Counter(
            "loopline_serving_version_requests_total",
            "scoring requests answered (or shadowed) per model version and role",
            ["version", "role"],
            registry=r,
        )
        self.version_errors = Counter(
            "loopline_serving_version_errors_total",
            "scoring requests that failed in the model, per version and role",
            ["version", "role"],
            registry=r,
        )
        self.rows = Counter(
            "loopline_serving_rows_total",
            "rows scored per model version and role",
            ["version", "role"],
            registry=r,
        )
        self.batch_rows = Histogram(
            "loopline_serving_batch_rows",
            "rows per model call (dynamic batching)",
            ["version"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_requests = Histogram(
            "loopline_serving_batch_requests",
            "requests merged into one model call",
            ["version"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("loopline_serving_queue_rows", "rows waiting for a model call", registry=r)
        self.in_flight = Gauge(
            "loopline_serving_requests_in_flight", "scoring requests being handled", registry=r
        )
        self.model_info = Gauge(
            "loopline_serving_model_info",
            "loaded model versions (value 1)",
            ["model", "version", "role"],
            registry=r,
        )
        self.model_version = Gauge(
            "loopline_serving_model_version",
            "the registry version served per role, as a number (compared with the exporter's "
            "loopline_registry_champion_version: a server behind @champion)",
            ["model", "role"],
            registry=r,
        )
        self.model_loads = Counter(
            "loopline_serving_model_loads_total",
            "model versions loaded (startup, poll, reload)",
            ["trigger"],
            registry=r,
        )
        self.log_rows = Counter(
            "loopline_serving_inference_log_rows_total",
            "rows appended to the inference log table",
            registry=r,
        )
        self.log_dropped = Counter(
            "loopline_serving_inference_log_dropped_rows_total",
            "rows the inference log dropped: its queue was full (requests never wait for the log), "
            "or a stop ran out of time",
            registry=r,
        )
        self.log_queue = Gauge(
            "loopline_serving_inference_log_queue_rows", "rows waiting to be written", registry=r
        )
        self.log_write_errors = Counter(
            "loopline_serving_inference_log_write_errors_total",
            "failed inference-log write attempts (predictions or dead-letter table)",
            registry=r,
        )
        self.log_retries = Counter(
            "loopline_serving_inference_log_retries_total",
            "inference-log flushes scheduled for another try after a failed write",
            registry=r,
        )
        self.log_deadletter_rows = Counter(
            "loopline_serving_inference_log_deadletter_rows_total",
            "rows parked in predictions_deadletter/M after their flush's retries were spent",
            registry=r,
        )
        self.log_found_on_retry = Counter(
            "loopline_serving_inference_log_commits_found_on_retry_total",
            "retries that found their flush already committed (an ambiguous failure): not written twice",
            registry=r,
        )
        self.rejected = Counter(
            "loopline_serving_overload_rejections_total",
            "scoring requests answered 503 + Retry-After by backpressure, by bound (inflight, queue)",
            ["bound"],
            registry=r,
        )
        self.shadow_skipped = Counter(
            "loopline_serving_shadow_skipped_total",
            "shadow scorings skipped by backpressure, by bound (tasks, queue); the champion answered",
            ["bound"],
            registry=r,
        )
        self.shadow_in_flight = Gauge(
            "loopline_serving_shadow_in_flight", "shadow scorings started and not finished", registry=r
        )
        # label feedback (POST /feedback, loopline.serving.feedback); the live metric it feeds is computed
        # from the lake by loopline.monitoring.live, not per request
        self.feedback_rows = Counter(
            "loopline_serving_feedback_rows_total",
            "labels committed to feedback/M, by outcome (inserted, updated: another label, unchanged: a repeat)",
            ["outcome"],
            registry=r,
        )
        self.feedback_write_errors = Counter(
            "loopline_serving_feedback_write_errors_total",
            "failed feedback/M commit attempts (retried; after the last one the requests get 503)",
            registry=r,
        )
        self.feedback_queue = Gauge(
            "loopline_serving_feedback_queue_rows", "labels waiting for their commit", registry=r
        )

    def watch_queue(self, rows_waiting: Callable[[], float]) -> None:
        self.queue_depth.set_function(rows_waiting)

    def render(self) -> bytes:
        return generate_latest(self.registry)
