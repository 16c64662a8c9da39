"""One DDP worker: `python -m torch.distributed.run ... -m loopline.train.worker SPEC` (see ddp.py).

Reads the pinned features version, joins the process group, runs the shared training loop; rank 0
writes checkpoints, logs metrics to the parent's MLflow run, appends progress lines and reports the
outcome (and the final weights) in files the parent reads. Exit 143 when preempted, resumable.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from loopline.config import LifecycleConfig
from loopline.lake import Lake
from loopline.train.checkpoint import CheckpointStore
from loopline.train.inputs import load_training_inputs
from loopline.train.loop import resolve_device, train_loop
from loopline.train.outcome import TrainOutcome
from loopline.train.preemption import PREEMPTED_EXIT_CODE, Preempted, PreemptionWatch


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text())
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s",
    )
    cfg = LifecycleConfig.model_validate(spec["config"])
    tcfg = cfg.training
    device = resolve_device(tcfg.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    world_size = dist.get_world_size()
    lake_spec = spec["lake"]
    lake = Lake(
        root=lake_spec["root"],
        endpoint_url=lake_spec.get("endpoint_url"),
        region=lake_spec.get("region"),
        access_key_id=os.environ.get("AWS_ACCESS_KEY_ID"),
        secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
    )
    inputs = load_training_inputs(lake, spec["dataset"], spec["features_version"])
    store = CheckpointStore(lake, spec["checkpoint_prefix"], tcfg.keep_last_checkpoints)
    metric_logger = None
    if rank == 0 and spec.get("run_id"):
        from loopline.train.tracking import MlflowMetricLogger

        metric_logger = MlflowMetricLogger(spec["tracking_uri"], spec["run_id"])

    def on_progress(payload: dict) -> None:
        with open(spec["progress_path"], "a") as fh:
            fh.write(json.dumps(payload) + "\n")

    code = 0
    try:
        with PreemptionWatch(handle_sigterm=True) as watch:
            result = train_loop(
                tcfg,
                inputs.data,
                store=store,
                device=device,
                meta=spec.get("checkpoint_meta") or {},
                rank=rank,
                world_size=world_size,
                watch=watch,
                on_metrics=metric_logger.log if metric_logger else None,
                on_progress=on_progress if rank == 0 else None,
            )
        if rank == 0:
            outcome = TrainOutcome.from_loop(result, world_size=world_size)
            torch.save(result.state_dict, spec["weights_path"])
            Path(spec["result_path"]).write_text(json.dumps(outcome.to_json()))
    except Preempted as exc:
        if rank == 0:
            info = {
                "message": str(exc),
                "step": exc.step,
                "checkpoint_uri": exc.checkpoint_uri,
                "reason": exc.reason,
            }
            Path(spec["result_path"]).write_text(json.dumps({"preempted": info}))
        code = PREEMPTED_EXIT_CODE
    finally:
        if metric_logger is not None:
            metric_logger.close()
        if dist.is_initialized():
            dist.destroy_process_group()
    return code


if __name__ == "__main__":
    sys.exit(main())
