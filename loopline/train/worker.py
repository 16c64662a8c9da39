"""One DDP worker: `python -m torch.distributed.run ... -m loopline.train.worker SPEC` (see ddp.py).

Memory-maps the arrays its node's parent wrote, reads the lake as every core process does (`Lake.from_env`:
the parent passes its lake in the environment), joins the process group, checks that every node brought the
same run (run key and data fingerprint), runs the shared training loop. Global rank 0 writes the checkpoints;
each node's first worker (local rank 0) appends progress and metric lines and reports the outcome (and, when
asked, the final weights) in files its own parent reads. Exit 143 when preempted, resumable; a user error
(e.g. a changed world size) is reported to the parent and exits with its code.
Dies with its torchrun agent (`die_with_parent`): a node whose agent is killed leaves no rank behind.
Imports torch and numpy only: no Delta, no MLflow, so workers start fast.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from loopline.config import LifecycleConfig
from loopline.errors import LooplineError
from loopline.storage.lake import Lake
from loopline.train.checkpoint import CheckpointStore
from loopline.train.ddp import read_arrays
from loopline.train.loop import resolve_device, train_loop
from loopline.train.outcome import TrainOutcome
from loopline.train.preemption import PREEMPTED_EXIT_CODE, Preempted, PreemptionWatch

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> None:
    """SIGKILL this worker when its torchrun agent dies. torchrun does not ask for it: an agent killed
    (OOM killer, `kill -9`, the parent's grace period running out) would leave its workers training on,
    holding GPUs and answering their peers' collectives as if the node were alive."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the agent died before prctl took effect
        os._exit(1)


def check_same_run(identity: str, world_size: int) -> None:
    """Every rank must train the same run on the same rows. On one node they share the parent's files; on
    several each node read its own copy, so a node that read other data (or runs another config) is
    refused here, by name, rather than averaged into the model."""
    if world_size == 1:
        return
    seen: list[str | None] = [None] * world_size
    dist.all_gather_object(seen, identity)
    odd = [rank for rank, other in enumerate(seen) if other != seen[0]]
    if odd:
        raise LooplineError(
            f"the nodes of this run disagree: rank(s) {odd} bring {seen[odd[0]]}, rank 0 brings {seen[0]} "
            "(run key/data fingerprint). Start every node with the same --features-version, config and code."
        )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    die_with_parent()
    spec = json.loads(Path(argv[0]).read_text())
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    reports = local_rank == 0  # this node's first worker speaks to this node's parent
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

    def report(item: dict) -> None:
        if reports:
            Path(spec["result_path"]).write_text(json.dumps(item))

    code = 0
    try:
        run_key = (spec.get("checkpoint_meta") or {}).get("run_key")
        check_same_run(f"{run_key}/{spec['data'].get('fingerprint')}", world_size)
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
                if reports
                else None,
                on_progress=(lambda payload: append({"progress": payload})) if reports else None,
            )
        if reports:
            outcome = TrainOutcome.from_loop(result, world_size=world_size)
            if spec.get("weights_path"):
                torch.save(result.state_dict, spec["weights_path"])
            report(outcome.to_json())
        dist.barrier()  # no rank tears the group down while another still uses it
    except Preempted as exc:
        info = {
            "message": str(exc),
            "step": exc.step,
            "checkpoint_uri": exc.checkpoint_uri,
            "reason": exc.reason,
        }
        report({"preempted": info})
        code = PREEMPTED_EXIT_CODE
    except LooplineError as exc:  # every rank raises it alike (they loaded the same checkpoint)
        report({"error": {"type": type(exc).__name__, "message": str(exc), "exit_code": exc.exit_code}})
        code = exc.exit_code
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
