"""DDP: `training.devices: N` runs N worker processes under torchrun (gloo on CPU, nccl on GPU).

The parent (run_training) keeps the MLflow run, the GPU sampler and the preemption watch. It has read
the split once; it hands the arrays to the workers as .npy files (so every rank sees exactly the same rows
and no worker imports Delta or MLflow), writes a spec, hands its lake on in the workers' environment
(`worker_env`), starts `python -m torch.distributed.run --standalone --nproc-per-node N -m
loopline.train.worker SPEC`, relays rank 0's progress and metric lines to the callbacks (MLflow), and
forwards SIGTERM to torchrun when preemption is requested (torchrun passes it on to every worker; they
agree on the step, rank 0 checkpoints, all exit 143).
Every worker loads the latest checkpoint at start, so a rerun resumes whatever killed the last one.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from loopline.storage.lake import Lake
from loopline.train.loop import TrainingData
from loopline.train.outcome import TrainOutcome
from loopline.train.preemption import Preempted, PreemptionWatch

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2
TERMINATE_GRACE_SECONDS = 60  # after forwarding SIGTERM, how long torchrun gets before SIGKILL


def torchrun_command(nproc: int, spec_path: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # single node: a local rendezvous on a free port
        f"--nproc-per-node={nproc}",
        "--max-restarts=0",  # restarts are the Prefect task's retries, which resume from the checkpoint
        "-m",
        "loopline.train.worker",
        spec_path,
    ]


def worker_env(lake: Lake, nproc: int) -> dict[str, str]:
    """The child environment. The lake goes as the variables `Lake.from_env` reads (the parent's lake,
    whether a LakeStorage block or the environment gave it), so a worker reads it as every core process
    does, and its secret key travels in the environment only, never in the spec file or argv."""
    env = {**os.environ, **lake.environment()}
    # one intra-op thread per worker on CPU unless told otherwise: N processes already use N cores
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def write_arrays(data: TrainingData, folder: Path) -> dict[str, Any]:
    """The split as .npy files each worker loads; returns the spec's `data` entry."""
    arrays = {}
    for name in ("X_train", "y_train", "X_valid", "y_valid"):
        value = getattr(data, name)
        if value is not None:
            path = folder / f"{name}.npy"
            np.save(path, value)
            arrays[name] = str(path)
    return {"arrays": arrays, "task": data.task, "n_classes": data.n_classes}


def read_arrays(entry: dict[str, Any]) -> TrainingData:
    loaded = {name: np.load(path) for name, path in entry["arrays"].items()}
    return TrainingData(
        X_train=loaded["X_train"],
        y_train=loaded["y_train"],
        task=entry["task"],
        X_valid=loaded.get("X_valid"),
        y_valid=loaded.get("y_valid"),
        n_classes=entry["n_classes"],
    )


def launch_ddp(
    spec: dict[str, Any],
    data: TrainingData,
    *,
    lake: Lake,
    nproc: int,
    watch: PreemptionWatch,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    on_metrics: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainOutcome:
    """Run the workers and return rank 0's outcome (weights included). Raises Preempted or RuntimeError."""
    with tempfile.TemporaryDirectory(prefix="loopline-ddp-") as tmp:
        names = ("spec.json", "result.json", "weights.pt", "progress.jsonl", "torchrun.log")
        paths = {name: str(Path(tmp) / name) for name in names}
        spec = {
            **spec,
            "data": write_arrays(data, Path(tmp)),
            "result_path": paths["result.json"],
            "weights_path": paths["weights.pt"],
            "progress_path": paths["progress.jsonl"],
        }
        Path(paths["spec.json"]).write_text(json.dumps(spec))
        cmd = torchrun_command(nproc, paths["spec.json"])
        log.info("launching %d DDP workers: %s", nproc, " ".join(cmd))
        with open(paths["torchrun.log"], "wb") as out:
            proc = subprocess.Popen(cmd, env=worker_env(lake, nproc), stdout=out, stderr=subprocess.STDOUT)
            forwarded_at = None
            progress_offset = 0
            while proc.poll() is None:
                if watch.requested and forwarded_at is None:
                    proc.send_signal(signal.SIGTERM)
                    forwarded_at = time.monotonic()
                if forwarded_at is not None and time.monotonic() - forwarded_at > TERMINATE_GRACE_SECONDS:
                    proc.kill()
                progress_offset = _relay(paths["progress.jsonl"], progress_offset, on_progress, on_metrics)
                time.sleep(POLL_SECONDS)
            _relay(paths["progress.jsonl"], progress_offset, on_progress, on_metrics)
        result = (
            json.loads(Path(paths["result.json"]).read_text())
            if Path(paths["result.json"]).exists()
            else None
        )
        if result and "preempted" in result:
            info = result["preempted"]
            raise Preempted(
                info["message"],
                step=info["step"],
                checkpoint_uri=info["checkpoint_uri"],
                reason=info["reason"],
            )
        if proc.returncode != 0 or result is None:
            tail = Path(paths["torchrun.log"]).read_text(errors="replace")[-4000:]
            if watch.requested:
                raise Preempted(
                    f"DDP training stopped on {watch.requested} before rank 0 reported a checkpoint",
                    step=-1,
                    checkpoint_uri=None,
                    reason=watch.requested,
                )
            raise RuntimeError(f"DDP training failed (torchrun exit {proc.returncode}):\n{tail}")
        outcome = TrainOutcome(**result)
        outcome.state_dict = torch.load(paths["weights.pt"], map_location="cpu", weights_only=True)
        return outcome


def _relay(
    path: str,
    offset: int,
    on_progress: Callable[[dict[str, Any]], None] | None,
    on_metrics: Callable[[int, dict[str, float]], None] | None,
) -> int:
    """Pass rank 0's complete lines on: {"progress": {...}} or {"metrics": {...}, "step": n}."""
    if not os.path.exists(path):
        return offset
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read()
    complete = data[: data.rfind(b"\n") + 1]
    for line in complete.splitlines():
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            if "progress" in item and on_progress:
                on_progress(item["progress"])
            elif "metrics" in item and on_metrics:
                on_metrics(int(item["step"]), item["metrics"])
        except Exception as exc:  # a progress consumer must not kill training
            log.debug("relaying %r failed: %s", line[:200], exc)
    return offset + len(complete)
