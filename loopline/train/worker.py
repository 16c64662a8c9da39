"""One DDP worker: `python -m torch.distributed.run ... -m loopline.train.worker SPEC` (see ddp.py).

Memory-maps the arrays the parent wrote, reads the lake as every core process does (`Lake.from_env`: the
parent passes its lake in the environment), joins the process group, runs the shared training loop; rank 0
writes checkpoints, appends progress and metric lines (the parent sends them to MLflow) and reports the
outcome (and the final weights) in files the parent reads. Exit 143 when preempted, resumable.
Imports torch and numpy only: no Delta, no MLflow, so workers start fast.
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
from loopline.storage.lake import Lake
from loopline.train.checkpoint import CheckpointStore
from loopline.train.ddp import read_arrays
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
    lake = Lake.from_env(cfg.home)  # the parent's lake, handed over in the environment (ddp.worker_env)
    data = read_arrays(spec["data"])
    store = CheckpointStore(lake, spec["checkpoint_prefix"], tcfg.keep_last_checkpoints)

    def append(item: dict) -> None:
        with open(spec["progress_path"], "a") as fh:
            fh.write(json.dumps(item) + "\n")

    code = 0
    try:
        with PreemptionWatch(handle_sigterm=True) as watch:
            result = train_loop(
                tcfg,
                data,
                store=store,
                device=device,
                meta=spec.get("checkpoint_meta") or {},
                rank=rank,
                world_size=world_size,
                watch=watch,
                on_metrics=(lambda step, metrics: append({"step": step, "metrics": metrics}))
                if rank == 0
                else None,
                on_progress=(lambda payload: append({"progress": payload})) if rank == 0 else None,
            )
        if rank == 0:
            outcome = TrainOutcome.from_loop(result, world_size=world_size)
            torch.save(result.state_dict, spec["weights_path"])
            Path(spec["result_path"]).write_text(json.dumps(outcome.to_json()))
        dist.barrier()  # no rank tears the group down while another still uses it
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
        if dist.is_initialized():
            dist.destroy_process_group()
    return code


if __name__ == "__main__":
    exit_code = main()
    # Everything is written and the group destroyed. Skip interpreter teardown: gloo's C++ threads can abort
    # it ("terminate called without an active exception"), turning a finished run into a failed one.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
