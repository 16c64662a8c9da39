"""Gauges of a running training, for Prometheus: progress, the GPU slot, GPU-seconds, DCGM-named GPU readings.

Prefect's server exports no metrics, so alerts about a training (no progress for N minutes, a GPU idle
while the run holds its slot) need these. The training loop only stores numbers (`progress`: a few
attribute writes at the loop's log cadence); a daemon thread renders and publishes them every
`interval_seconds` (and once more at `close`) through `loopline.monitoring.publish`: the textfile
`$LOOPLINE_HOME/metrics/training_<model>.prom` and, when set, the Pushgateway group
job="training", model=<model>. One file/group per model: the newest run of a model replaces the last one,
so series do not pile up run after run.

Every family carries `model`, `run` (the MLflow run id) and `host`. The DCGM_FI_* gauges are the
GpuSampler's latest readings with those three labels added, so an alert joins GPU utilisation to
`loopline_training_gpu_slot_held` on (model, run); `host` lets a rule join dcgm-exporter's own
`DCGM_FI_PROF_GR_ENGINE_ACTIVE{pod=...}` (readable under MIG) to the run's pod.
Cost per run: `loopline_training_gpu_seconds` (GPUs x seconds since start, as GpuSampler.summary counts
GPU-hours) x `loopline_training_gpu_price_per_hour` / 3600.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from loopline.monitoring.publish import BackgroundPublisher, Families
from loopline.train.gpu import GpuSampler, prometheus_text

JOB = "training"
PUBLISH_EVERY_SECONDS = 15.0  # one scrape interval: fresh enough for alerts counted in minutes


class TrainingTelemetry:
    def __init__(
        self,
        home: str,
        model: str,
        run_id: str,
        *,
        sampler: GpuSampler | None = None,
        price_per_gpu_hour: float = 0.0,
        gpu_slot_held: bool = False,
        nodes: int = 1,
        interval_seconds: float = PUBLISH_EVERY_SECONDS,
    ):
        self.labels = {"model": model, "run": run_id, "host": socket.gethostname()}
        self.sampler = sampler
        self.price_per_gpu_hour = price_per_gpu_hour
        self.gpu_slot_held = gpu_slot_held
        self.nodes = nodes  # a multi-node run publishes from node 0 only: its GPUs times the nodes
        self.interval_seconds = interval_seconds
        self.started_at = time.time()
        self.step = 0
        self.total_steps = 0
        self.loss: float | None = None
        self.samples_per_s: float | None = None
        self.last_progress_at = self.started_at  # the start counts: loading data is progress not yet due
        self.running = True
        self._publisher = BackgroundPublisher(home, JOB, {"model": model})
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> TrainingTelemetry:
        self._publisher.submit(self.text())
        self._thread = threading.Thread(target=self._run, name="loopline-training-metrics", daemon=True)
        self._thread.start()
        return self

    def progress(self, payload: dict[str, Any]) -> None:
        """The loop's progress callback (rank 0, every log_every_steps): store, never publish here."""
        self.step = int(payload.get("step") or self.step)
        self.total_steps = int(payload.get("total_steps") or self.total_steps)
        if payload.get("loss") is not None:
            self.loss = float(payload["loss"])
        if payload.get("samples_per_s") is not None:
            self.samples_per_s = float(payload["samples_per_s"])
        self.last_progress_at = time.time()

    def close(self) -> None:
        """The run is over (finished, failed or preempted): publish it as not running, slot released."""
        if not self.running:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.running = False
        self.gpu_slot_held = False
        self._publisher.submit(self.text())
        self._publisher.close()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_seconds):
            self._publisher.submit(self.text())

    def gpu_seconds(self, now: float | None = None) -> float:
        """GPUs in use (on every node) x seconds since the run started (0 on CPU): the run's cost base."""
        devices = len({s.uuid for s in self.sampler.latest}) if self.sampler is not None else 0
        return devices * self.nodes * max(0.0, (now or time.time()) - self.started_at)

    def text(self) -> str:
        now = time.time()
        lb = self.labels
        f = Families()
        f.gauge("loopline_training_running", "1 while the training run is running", int(self.running), **lb)
        f.gauge(
            "loopline_training_gpu_slot_held",
            "1 while the run holds its GPU slot (Prefect global concurrency limit training.gpu_slot)",
            int(self.running and self.gpu_slot_held),
            **lb,
        )
        f.gauge("loopline_training_step", "optimizer steps done", self.step, **lb)
        f.gauge("loopline_training_total_steps", "optimizer steps planned", self.total_steps, **lb)
        f.gauge(
            "loopline_training_last_progress_timestamp_seconds",
            "when the run last reported progress (Unix time; its start until the first report)",
            self.last_progress_at,
            **lb,
        )
        f.gauge(
            "loopline_training_started_timestamp_seconds",
            "when the run started (Unix time)",
            self.started_at,
            **lb,
        )
        if self.loss is not None:
            f.gauge("loopline_training_loss", "training loss, mean over the last log window", self.loss, **lb)
        if self.samples_per_s is not None:
            f.gauge("loopline_training_samples_per_second", "training throughput", self.samples_per_s, **lb)
        f.gauge(
            "loopline_training_gpu_seconds",
            "GPUs in use x seconds since the run started",
            self.gpu_seconds(now),
            **lb,
        )
        f.gauge(
            "loopline_training_gpu_price_per_hour",
            "USD per GPU-hour (training.gpu_price_per_hour), for the cost per run",
            self.price_per_gpu_hour,
            **lb,
        )
        text = f.text()
        latest = self.sampler.latest if self.sampler is not None else []
        if latest:
            text += prometheus_text(
                latest, hostname=lb["host"], extra_labels={"model": lb["model"], "run": lb["run"]}
            )
        return text
