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

        client = MlflowClient(self.tracking_uri)
        closing = False
        last_flush = 0.0
        while not closing:
            try:
                first = self._queue.get(timeout=FLUSH_SECONDS)
            except queue.Empty:
                continue
            # gather for up to FLUSH_SECONDS since the last send: one log_batch per window, not per step
            batch, closing = self._add([], first)
            deadline = last_flush + FLUSH_SECONDS
            while not closing and len(batch) < MAX_BATCH_METRICS - 50:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    break
                try:
                    batch, closing = self._add(batch, self._queue.get(timeout=wait))
                except queue.Empty:
                    break
            self._send(client, batch)
            last_flush = time.monotonic()

    def _add(self, batch: list, item) -> tuple[list, bool]:
        from mlflow.entities import Metric

        if item is None:
            return batch, True
        step, ts, metrics = item
        batch += [
            Metric(self.prefix + k, float(v), ts, step)
            for k, v in metrics.items()
            if v is not None and v == v
        ]
        return batch, False

    def _send(self, client, batch: list) -> None:
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
