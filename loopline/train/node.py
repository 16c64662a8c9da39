"""One node's share of a run that has no MLflow run here: a follower node (rank > 0) of `run_training`, or
any node of `python -m loopline.train.standalone`.

It starts this node's torchrun agent and workers (ddp.launch_ddp), forwards SIGTERM and spot notices to them,
and returns what its first worker reports. The checkpoints go to the shared lake from whichever node holds
global rank 0; the model is registered by node 0's `run_training` only.

A run key whose newest checkpoint is marked finished needs no rendezvous: every node reads that checkpoint in
its own process and returns it. Otherwise node 0 could answer "already trained" from MLflow and never come to
a rendezvous its followers wait 30 minutes for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from loopline.config import LifecycleConfig
from loopline.storage.lake import Lake
from loopline.train.checkpoint import CheckpointStore
from loopline.train.loop import TrainingData
from loopline.train.outcome import TrainOutcome
from loopline.train.preemption import PreemptionWatch
from loopline.train.topology import Topology

log = logging.getLogger(__name__)


def node_result(outcome: TrainOutcome, topology: Topology, run_key: str) -> dict[str, Any]:
    """The JSON a node prints: what it trained and where it stood in the run."""
    return {
        "role": "leader" if topology.node_rank == 0 else "follower",
        "node_rank": topology.node_rank,
        "nodes": topology.nodes,
        "devices": outcome.world_size,
        "run_key": run_key,
        "steps": outcome.steps,
        "resumed_from_step": outcome.resumed_from_step,
        "state_sha256": outcome.state_sha256,
        "samples_per_s": outcome.samples_per_s,
        "seconds": outcome.seconds,
        "device": outcome.device,
        "precision": outcome.precision,
        "val_metrics": outcome.val_metrics,
        "checkpoint_uri": outcome.checkpoint_uri,
        "checkpoint_seconds_last": outcome.checkpoint_seconds_last,
    }


def train_node(
    cfg: LifecycleConfig,
    data: TrainingData,
    *,
    lake: Lake,
    store: CheckpointStore,
    topology: Topology,
    checkpoint_meta: dict[str, Any],
    want_weights: bool = False,
    fresh: bool = False,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> TrainOutcome:
    """Train this node's processes under torchrun; raises Preempted (rerun to resume) or the workers' error."""
    from loopline.train.ddp import launch_ddp

    tcfg = cfg.training
    if topology.multi_node and not fresh and run_is_finished(store):  # --fresh: node 0 is deleting it
        log.info("run %s has a finished checkpoint: read in this process, no rendezvous", topology.rdzv_id)
        return read_finished_run(cfg, data, store=store, meta=checkpoint_meta, want_weights=want_weights)
    spec = {
        "config": cfg.model_dump(mode="json"),
        "checkpoint_prefix": store.prefix_uri,
        "checkpoint_meta": checkpoint_meta,
    }
    with PreemptionWatch(
        spot_notice_url=tcfg.spot_notice_url,
        spot_notice_file=tcfg.spot_notice_file,
        poll_seconds=tcfg.spot_poll_seconds,
    ) as watch:
        return launch_ddp(
            spec,
            data,
            lake=lake,
            topology=topology,
            watch=watch,
            want_weights=want_weights,
            on_progress=on_progress,
        )


def run_is_finished(store: CheckpointStore) -> bool:
    """The newest good checkpoint says the run is finished (its weights are final)."""
    loaded = store.load_latest(map_location="cpu")
    return bool(loaded is not None and loaded.state.get("finished"))


def read_finished_run(
    cfg: LifecycleConfig,
    data: TrainingData,
    *,
    store: CheckpointStore,
    meta: dict[str, Any],
    want_weights: bool,
) -> TrainOutcome:
    """A finished run's outcome through the loop itself (it loads the final checkpoint and trains nothing)."""
    from loopline.train.loop import resolve_device, train_loop

    result = train_loop(cfg.training, data, store=store, device=resolve_device("cpu"), meta=meta)
    outcome = TrainOutcome.from_loop(result)
    outcome.state_dict = result.state_dict if want_weights else None
    return outcome


def follow_run(
    cfg: LifecycleConfig,
    data: TrainingData,
    *,
    lake: Lake,
    store: CheckpointStore,
    topology: Topology,
    meta: dict[str, Any],
    fresh: bool = False,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """`run_training` on a node of rank > 0: this node's GPUs and workers, no MLflow run, no registration."""
    if cfg.training.device != "cpu":
        from loopline.train.gpu import apply_gpu_choice

        apply_gpu_choice(cfg.training.devices)
    log.info("%s: training; node 0 tracks the run in MLflow and registers the model", topology.describe())
    outcome = train_node(
        cfg,
        data,
        lake=lake,
        store=store,
        topology=topology,
        checkpoint_meta=meta,
        fresh=fresh,
        on_progress=on_progress,
    )
    return {**node_result(outcome, topology, meta["run_key"]), "model_name": meta.get("model_name")}
