"""DDP: `training.devices` processes per node under torchrun (gloo on CPU, nccl on GPU), on one node or on
`training.nodes` of them (loopline.train.topology says how the nodes meet).

The parent on each node (run_training, or `python -m loopline.train.standalone`) has read the split once; it
hands the arrays to its workers as .npy files (so every rank sees exactly the same rows and no worker imports
Delta or MLflow), writes a spec, hands its lake on in the workers' environment (`worker_env`), starts
`python -m torch.distributed.run <topology args> -m loopline.train.worker SPEC`, relays its first worker's
progress and metric lines to the callbacks (MLflow), and forwards SIGTERM to torchrun when preemption is
requested (torchrun passes it on to its workers; the ranks of all nodes agree on the step through a
collective flag, the rank-0 worker checkpoints to the shared lake, all exit 143).
Each node's first worker (local rank 0) reports the outcome to its own parent: torchrun may put global
rank 0 on any node. Every worker loads the same checkpoint at start, so a rerun resumes whatever killed the
last attempt, on any node.
"""

from __future__ import annotations

import hashlib
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

from loopline.errors import ConfigError, LooplineError
from loopline.storage.lake import Lake
from loopline.train.loop import TrainingData
from loopline.train.outcome import TrainOutcome
from loopline.train.preemption import Preempted, PreemptionWatch
from loopline.train.topology import Topology, WorldSizeChanged, torchrun_args

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2
TERMINATE_GRACE_SECONDS = 60  # after forwarding SIGTERM, how long torchrun gets before SIGKILL
# errors a worker reports in its result file, raised again here as the same type (exit 2 for the CLI)
WORKER_ERRORS: dict[str, type[LooplineError]] = {
    "WorldSizeChanged": WorldSizeChanged,
    "ConfigError": ConfigError,
}


def torchrun_command(topology: Topology, spec_path: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *torchrun_args(topology),
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


def write_arrays(data: TrainingData, folder: Path, *, fingerprint: bool = False) -> dict[str, Any]:
    """The split as .npy files each worker loads; returns the spec's `data` entry. With `fingerprint`
    (several nodes, each of which read its own copy) the entry carries a SHA-256 of the arrays, which the
    workers compare before the first step."""
    arrays = {}
    digest = hashlib.sha256()
    for name in ("X_train", "y_train", "X_valid", "y_valid"):
        value = getattr(data, name)
        if value is not None:
            path = folder / f"{name}.npy"
            np.save(path, value)
            arrays[name] = str(path)
            if fingerprint:
                digest.update(f"{name}{value.dtype}{value.shape}".encode())
                digest.update(np.ascontiguousarray(value).view(np.uint8).reshape(-1).data)
    entry = {"arrays": arrays, "task": data.task, "n_classes": data.n_classes}
    if fingerprint:
        entry["fingerprint"] = digest.hexdigest()[:16]
    return entry


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
    topology: Topology,
    watch: PreemptionWatch,
    want_weights: bool = True,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    on_metrics: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainOutcome:
    """Run this node's workers and return the outcome its first worker reports (with the final weights
    when `want_weights`). Raises Preempted, the LooplineError a worker reported, or RuntimeError."""
    with tempfile.TemporaryDirectory(prefix="loopline-ddp-") as tmp:
        names = ("spec.json", "result.json", "weights.pt", "progress.jsonl", "torchrun.log")
        paths = {name: str(Path(tmp) / name) for name in names}
        spec = {
            **spec,
            "data": write_arrays(data, Path(tmp), fingerprint=topology.multi_node),
            "result_path": paths["result.json"],
            "weights_path": paths["weights.pt"] if want_weights else None,
            "progress_path": paths["progress.jsonl"],
        }
        Path(paths["spec.json"]).write_text(json.dumps(spec))
        cmd = torchrun_command(topology, paths["spec.json"])
        log.info("launching %s: %s", topology.describe(), " ".join(cmd))
        with open(paths["torchrun.log"], "wb") as out:
            proc = subprocess.Popen(
                cmd, env=worker_env(lake, topology.devices), stdout=out, stderr=subprocess.STDOUT
            )
            forwarded_at = None
            progress_offset = 0
            while proc.poll() is None:
                if watch.requested and forwarded_at is None:
                    proc.send_signal(signal.SIGTERM)
                    forwarded_at = time.monotonic()
                if forwarded_at is not None and time.monotonic() - forwarded_at > TERMINATE_GRACE_SECONDS:
                    proc.kill()  # its workers die with it (worker.die_with_parent)
                progress_offset = _relay(paths["progress.jsonl"], progress_offset, on_progress, on_metrics)
                time.sleep(POLL_SECONDS)
            _relay(paths["progress.jsonl"], progress_offset, on_progress, on_metrics)
        result_file = Path(paths["result.json"])
        result = json.loads(result_file.read_text()) if result_file.exists() else None
        if result and "preempted" in result:
            info = result["preempted"]
            raise Preempted(
                info["message"],
                step=info["step"],
                checkpoint_uri=info["checkpoint_uri"],
                reason=info["reason"],
            )
        if result and "error" in result:
            info = result["error"]
            error = WORKER_ERRORS.get(info["type"], LooplineError)(info["message"])
            error.exit_code = int(info.get("exit_code") or error.exit_code)
            raise error
        if proc.returncode != 0 or result is None:
            tail = Path(paths["torchrun.log"]).read_text(errors="replace")[-4000:]
            if watch.requested:
                raise Preempted(
                    f"DDP training stopped on {watch.requested} before its workers reported a checkpoint",
                    step=-1,
                    checkpoint_uri=None,
                    reason=watch.requested,
                )
            if topology.multi_node and "RendezvousTimeoutError" in tail:
                raise LooplineError(
                    f"the nodes did not all join rendezvous {topology.rdzv_id} at {topology.endpoint} within "
                    f"{topology.join_timeout_s} s (training.rdzv_join_timeout_seconds). Every node must start the "
                    f"same run key ({topology.rdzv_id}): the same features version (--features-version), config "
                    f"and code version (LOOPLINE_CODE_VERSION / image); and node 0 must be reachable there."
                )
            raise RuntimeError(f"DDP training failed (torchrun exit {proc.returncode}):\n{tail}")
        outcome = TrainOutcome(**result)
        if want_weights:
            import torch

            outcome.state_dict = torch.load(paths["weights.pt"], map_location="cpu", weights_only=True)
        return outcome


def _relay(
    path: str,
    offset: int,
    on_progress: Callable[[dict[str, Any]], None] | None,
    on_metrics: Callable[[int, dict[str, float]], None] | None,
) -> int:
    """Pass the first worker's complete lines on: {"progress": {...}} or {"metrics": {...}, "step": n}."""
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
