"""Metrics to MLflow without slowing the loop: the loop enqueues, a background thread sends batches."""

from __future__ import annotations

import logging
import queue
import threading
import time

log = logging.getLogger(__name__)

MAX_BATCH_METRICS = 1000  # MLflow's log_batch limit
FLUSH_SECONDS = 2.0


class MlflowMetricLogger:
    """`log(step, {name: value})` is a queue put; `close()` flushes everything (call it before ending the run).

    A failing tracking server never fails training: errors are logged and the batch is dropped."""

    def __init__(self, tracking_uri: str, run_id: str, *, prefix: str = ""):
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.prefix = prefix
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="loopline-mlflow-metrics", daemon=True)
        self._thread.start()
        self.sent = 0

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self._queue.put((step, int(time.time() * 1000), metrics))

    def _run(self) -> None:
        from mlflow import MlflowClient
        from mlflow.entities import Metric

        client = MlflowClient(self.tracking_uri)
        closing = False
        while not closing:
            batch: list[Metric] = []
            try:
                item = self._queue.get(timeout=FLUSH_SECONDS)
            except queue.Empty:
                continue
            while True:
                if item is None:
                    closing = True
                else:
                    step, ts, metrics = item
                    batch += [
                        Metric(self.prefix + k, float(v), ts, step)
                        for k, v in metrics.items()
                        if v is not None and v == v
                    ]
                if closing or len(batch) >= MAX_BATCH_METRICS - 10:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            for start in range(0, len(batch), MAX_BATCH_METRICS):
                chunk = batch[start : start + MAX_BATCH_METRICS]
                try:
                    client.log_batch(self.run_id, metrics=chunk, synchronous=True)
                    self.sent += len(chunk)
                except Exception as exc:  # tracking trouble must not stop a GPU job
                    log.warning("could not log %d metrics to MLflow: %s", len(chunk), exc)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=60)
