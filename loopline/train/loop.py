"""The training loop: one process's share of a run, resumable at any step, exact on CPU.

Reads top to bottom: build the model, optimizer and schedule; resume from the latest good checkpoint;
then per step: gather a batch, forward (bf16 autocast on CUDA), backward, step; every few steps log,
evaluate, checkpoint (in the background); stop early, on preemption, or at the last step. The same
function runs in-process (devices=1) and in every torchrun worker (devices>1, DDP).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from loopline.config import TrainingConfig
from loopline.errors import ConfigError
from loopline.faults import kill_point
from loopline.packaging.factory import resolve_factory, trust_module_of
from loopline.train.async_writer import AsyncCheckpointWriter, snapshot
from loopline.train.checkpoint import CheckpointStore
from loopline.train.data import BatchOrder, PlacedTensors, place_tensors, total_steps
from loopline.train.metrics import MAXIMISED, is_better, loss_fn, validation_metrics
from loopline.train.models import output_dim_for
from loopline.train.outcome import TrainOutcome
from loopline.train.preemption import Preempted, PreemptionWatch
from loopline.train.state import (
    capture_rng_state,
    restore_rng_state,
    seed_everything,
    state_sha256,
    unwrap_state_dict,
)
from loopline.train.topology import check_resume_world_size, load_agreed_checkpoint

log = logging.getLogger(__name__)

EVAL_BATCH_ROWS = 65_536  # validation forward passes in chunks: bounded activation memory
MIN_LR_FRACTION = 0.1  # cosine decays to a tenth of the peak, not to zero (nanoGPT's convention)
DDP_PREEMPT_SYNC_STEPS = 10  # ranks agree on a preemption every N steps (one tiny all-reduce)
METRICS_BY_TASK = {
    "binary": ("val_loss", "accuracy", "roc_auc"),
    "multiclass": ("val_loss", "accuracy"),
    "regression": ("val_loss", "rmse", "mae", "r2"),
}

MetricsCallback = Callable[[int, dict[str, float]], None]
ProgressCallback = Callable[[dict[str, Any]], None]


@dataclass
class TrainingData:
    """What the loop needs from the feature store: float32 X, task-typed y (see loopline.features)."""

    X_train: np.ndarray
    y_train: np.ndarray
    task: str
    X_valid: np.ndarray | None = None
    y_valid: np.ndarray | None = None
    n_classes: int | None = None


@dataclass
class LoopResult(TrainOutcome):
    """What `train_loop` returns: the outcome plus the trained module itself."""

    model: nn.Module | None = field(default=None, repr=False)


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """auto: CUDA when torch sees a GPU, else CPU. A worker of a multi-GPU run takes GPU `local_rank`."""
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("training.device is 'cuda' but torch sees no CUDA GPU")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. auto: bf16 on a CUDA GPU that supports it."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def configure_determinism(deterministic: bool, device: torch.device) -> None:
    if device.type == "cuda":
        # cuBLAS needs a fixed workspace for reproducible results (set before its first use)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cuda.matmul.allow_tf32 = not deterministic
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def make_lr_lambda(kind: str, total: int, warmup: int) -> Callable[[int], float]:
    """Multiplier of the peak lr after `i` scheduler steps: linear warm-up, then none/cosine/step."""

    def lr_lambda(i: int) -> float:
        if warmup and i < warmup:
            return (i + 1) / warmup
        if kind == "none":
            return 1.0
        progress = min(1.0, (i - warmup) / max(1, total - warmup))
        if kind == "cosine":
            return MIN_LR_FRACTION + (1 - MIN_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress))
        # step: x0.1 at half and at three quarters of the run
        return 0.1 ** ((progress >= 0.5) + (progress >= 0.75))

    return lr_lambda


def keeps_best(cfg: TrainingConfig) -> bool:
    """Whether the run ends with its best evaluated weights (by early_stopping_metric): with early stopping,
    or with keep_best_weights (the default). Without it, a small dataset trained for a fixed number of
    full-batch steps ends overfitted (sklearn's diabetes, 351 training rows, 300 steps: val r2 0.45 at step
    20, -0.12 at step 300)."""
    return cfg.early_stopping_patience is not None or cfg.keep_best_weights


def standardise_targets(task: str, y: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Regression targets are trained standardised (mean 0, sd 1); the predictor undoes it."""
    if task != "regression":
        return y, 0.0, 1.0
    mean = float(np.mean(y, dtype=np.float64))
    std = float(np.std(y, dtype=np.float64)) or 1.0
    return ((y - mean) / std).astype(np.float32), mean, std


def _targets(task: str, y: np.ndarray) -> np.ndarray:
    if task == "multiclass":
        return y.astype(np.int64, copy=False)
    return y.astype(np.float32, copy=False)


class _PinnedBatcher:
    """Host-resident data: gather into one of two pinned buffers and copy asynchronously to the GPU."""

    def __init__(self, data: PlacedTensors, batch_size: int, device: torch.device):
        self.data, self.device = data, device
        self.buffers = [
            (
                torch.empty((batch_size, *data.X.shape[1:]), dtype=data.X.dtype).pin_memory(),
                torch.empty((batch_size, *data.y.shape[1:]), dtype=data.y.dtype).pin_memory(),
            )
            for _ in range(2)
        ]
        self.events: list[torch.cuda.Event | None] = [None, None]
        self.turn = 0

    def __call__(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        slot, self.turn = self.turn, 1 - self.turn
        if self.events[slot] is not None:
            self.events[slot].synchronize()  # the copy that last used this buffer has finished
        xbuf, ybuf = self.buffers[slot]
        n = idx.numel()
        torch.index_select(self.data.X, 0, idx, out=xbuf[:n])
        torch.index_select(self.data.y, 0, idx, out=ybuf[:n])
        xb = xbuf[:n].to(self.device, non_blocking=True)
        yb = ybuf[:n].to(self.device, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.events[slot] = event
        return xb, yb


def evaluate(
    model: nn.Module,
    data: PlacedTensors,
    task: str,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
    target_mean: float,
    target_std: float,
) -> dict[str, float]:
    was_training = model.training
    model.eval()
    outputs = []
    with torch.no_grad(), _autocast(device, autocast_dtype):
        for start in range(0, data.X.shape[0], EVAL_BATCH_ROWS):
            xb = data.X[start : start + EVAL_BATCH_ROWS].to(device, non_blocking=True)
            outputs.append(model(xb).float())
    model.train(was_training)
    out = torch.cat(outputs).cpu()
    return validation_metrics(task, out, data.y.cpu(), target_mean=target_mean, target_std=target_std)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def train_loop(
    cfg: TrainingConfig,
    data: TrainingData,
    *,
    store: CheckpointStore | None,
    device: torch.device,
    meta: dict[str, Any] | None = None,
    rank: int = 0,
    world_size: int = 1,
    watch: PreemptionWatch | None = None,
    on_metrics: MetricsCallback | None = None,
    on_progress: ProgressCallback | None = None,
    background_checkpoints: bool = True,
) -> LoopResult:
    """Train (or finish training) one run. Raises Preempted after checkpointing when asked to stop."""
    task = data.task
    if data.X_valid is not None and cfg.early_stopping_patience is not None:
        if cfg.early_stopping_metric not in METRICS_BY_TASK[task]:
            raise ConfigError(
                f"training.early_stopping_metric {cfg.early_stopping_metric!r} is not a {task} metric; "
                f"choose one of {METRICS_BY_TASK[task]}"
            )
    is_writer = rank == 0 and store is not None
    distributed = world_size > 1

    # Model, optimizer, schedule (seeded: the same seed gives the same initial weights)
    seed_everything(cfg.seed)
    configure_determinism(cfg.deterministic, device)
    autocast_dtype = resolve_precision(cfg.precision, device)
    input_dim = int(data.X_train.shape[1])
    output_dim = output_dim_for(task, data.n_classes)
    trust_module_of(cfg.model)  # its bundle names this factory: evaluation and serving here may load it
    model = resolve_factory(cfg.model)(input_dim, output_dim, cfg).to(device)
    inner = model
    if distributed:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(inner, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=device.type == "cuda" or None
    )

    y_train, target_mean, target_std = standardise_targets(task, _targets(task, data.y_train))
    train = place_tensors(data.X_train, y_train, device)
    valid = None
    if data.X_valid is not None and data.y_valid is not None and len(data.X_valid):
        y_valid = _targets(task, data.y_valid)
        if task == "regression":
            y_valid = ((y_valid - target_mean) / target_std).astype(np.float32)
        valid = place_tensors(data.X_valid, y_valid, device)
    order = BatchOrder(len(train.X), cfg.batch_size, cfg.seed, rank=rank, world_size=world_size)
    total = total_steps(cfg.max_steps, cfg.epochs, order.steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, make_lr_lambda(cfg.scheduler, total, cfg.warmup_steps)
    )

    # Resume from the latest good checkpoint of this run key
    step, best, evals_since_best, best_model = 0, None, 0, None
    val_metrics: dict[str, float] = {}
    stopped_early = finished = False
    resumed_from = 0
    loaded = load_agreed_checkpoint(store, rank=rank, distributed=distributed, device=device)
    if loaded is not None:
        ckpt = loaded.state
        check_resume_world_size(ckpt, world_size, loaded.uri)
        inner.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        restore_rng_state(ckpt["rng"])
        step = resumed_from = int(ckpt["step"])
        best, evals_since_best = ckpt.get("best_metric"), int(ckpt.get("evals_since_best", 0))
        best_model = ckpt.get("best_model")
        val_metrics = dict(ckpt.get("val_metrics") or {})
        stopped_early, finished = bool(ckpt.get("stopped_early")), bool(ckpt.get("finished"))
        if rank == 0:
            log.info("resuming from %s (step %d of %d)", loaded.uri, step, total)

    writer = AsyncCheckpointWriter(store, background=background_checkpoints) if is_writer else None
    if is_writer:
        # what a kill mid-save left: a temp file (killed before the rename), a file too many (before the prune)
        store.remove_stale_temp_files()
        store.prune()

    def checkpoint_state(done: int) -> dict[str, Any]:
        epoch, batch = order.position(done)
        return {
            "model": inner.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": done,
            "epoch": epoch,
            "batch_in_epoch": batch,
            "data_order": {
                "seed": cfg.seed,
                "rows": order.n_rows,
                "batch_size": cfg.batch_size,
                "world_size": world_size,
            },
            "rng": capture_rng_state(),
            "best_metric": best,
            "evals_since_best": evals_since_best,
            "best_model": best_model,
            "val_metrics": val_metrics,
            "stopped_early": stopped_early,
            "finished": finished,
            "target": {"mean": target_mean, "std": target_std},
            **(meta or {}),
        }

    batcher = _PinnedBatcher(train, cfg.batch_size, device) if train.where == "pinned" else None
    index_device = train.X.device if batcher is None else torch.device("cpu")
    watched_metric = cfg.early_stopping_metric
    loss_sum = torch.zeros((), device=device)
    window_steps, window_samples, window_start = 0, 0, time.perf_counter()
    attempt_samples, attempt_start = 0, time.perf_counter()
    last_checkpoint_time = time.monotonic()
    preempt_flag = torch.zeros(1, device=device) if distributed else None
    model.train()

    try:
        while step < total and not (finished or stopped_early):
            # One optimizer step
            idx = order.batch_indices(step, device=index_device)
            if batcher is not None:
                xb, yb = batcher(idx)
            else:
                xb, yb = train.X[idx], train.y[idx]
            with _autocast(device, autocast_dtype):
                outputs = model(xb)
            loss = loss_fn(task, outputs, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            kill_point("train.step")  # weights moved past the last checkpoint; a checkpoint may be in flight
            loss_sum += loss.detach()
            window_steps += 1
            window_samples += idx.numel() * world_size
            attempt_samples += idx.numel() * world_size

            # Log (the only host sync per window: the loss stays on the device until now)
            if step % cfg.log_every_steps == 0 or step == total:
                now = time.perf_counter()
                metrics = {
                    "loss": float(loss_sum) / window_steps,
                    "lr": scheduler.get_last_lr()[0],
                    "samples_per_s": window_samples / max(now - window_start, 1e-9),
                }
                loss_sum.zero_()
                window_steps, window_samples, window_start = 0, 0, now
                if rank == 0:
                    log.info(
                        "step %d/%d loss %.5f lr %.3g %.0f samples/s",
                        step,
                        total,
                        metrics["loss"],
                        metrics["lr"],
                        metrics["samples_per_s"],
                    )
                if on_metrics:  # the caller hands callbacks to the process that reports (one per node)
                    on_metrics(step, metrics)
                if on_progress:
                    on_progress({"step": step, "total_steps": total, **metrics})

            # Evaluate; early stopping watches one metric
            epoch_end = step % order.steps_per_epoch == 0
            if valid is not None and (step % cfg.eval_every_steps == 0 or epoch_end or step == total):
                val_metrics = evaluate(inner, valid, task, device, autocast_dtype, target_mean, target_std)
                value = val_metrics.get(watched_metric)
                if value is not None and not math.isnan(value):
                    if is_better(watched_metric, value, best):
                        best, evals_since_best = value, 0
                        if keeps_best(cfg):
                            best_model = snapshot(inner.state_dict())
                    else:
                        evals_since_best += 1
                        if (
                            cfg.early_stopping_patience is not None
                            and evals_since_best >= cfg.early_stopping_patience
                        ):
                            stopped_early = True
                            if rank == 0:
                                log.info(
                                    "early stop at step %d: %s has not improved for %d evaluations",
                                    step,
                                    watched_metric,
                                    evals_since_best,
                                )
                if on_metrics:
                    on_metrics(
                        step,
                        {f"val_{k}" if not k.startswith("val_") else k: v for k, v in val_metrics.items()},
                    )

            # Preemption: checkpoint now, stop resumable (ranks agree first, or one would hang in all-reduce)
            requested = watch.requested if watch is not None else None
            if distributed and (step % DDP_PREEMPT_SYNC_STEPS == 0 or step == total):
                preempt_flag.fill_(1.0 if requested else 0.0)
                torch.distributed.all_reduce(preempt_flag, op=torch.distributed.ReduceOp.MAX)
                requested = requested or ("a peer was preempted" if preempt_flag.item() > 0 else None)
            elif distributed:
                requested = None
            if requested and step < total and not stopped_early:
                uri = store.uri_for(step) if store is not None else None  # where rank 0 writes it
                if writer is not None:
                    writer.submit(checkpoint_state(step))
                    uri = writer.wait()
                if distributed:
                    torch.distributed.barrier()
                raise Preempted(
                    f"training preempted ({requested}) at step {step} of {total}; checkpoint {uri}; rerun to resume",
                    step=step,
                    checkpoint_uri=uri,
                    reason=requested,
                )

            # Checkpoint in the background, by steps and by wall time
            if writer is not None and step < total and not stopped_early:
                due_by_time = time.monotonic() - last_checkpoint_time >= cfg.checkpoint_every_seconds
                if step % cfg.checkpoint_every_steps == 0 or due_by_time:
                    writer.submit(checkpoint_state(step))
                    last_checkpoint_time = time.monotonic()

        seconds = time.perf_counter() - attempt_start
        # The final checkpoint marks the run finished, so a rerun of the same key does no work
        already_final = finished
        finished = True
        if writer is not None and not already_final:
            writer.submit(checkpoint_state(step))
        checkpoint_uri = writer.wait() if writer is not None else None
        if checkpoint_uri is None and loaded is not None:
            checkpoint_uri = loaded.uri  # a finished run resumed: its final checkpoint
    finally:
        if writer is not None:
            writer.close()

    if best_model is not None and keeps_best(cfg):
        inner.load_state_dict(best_model)  # the best evaluated weights, not the last step's
        if valid is not None:  # the metrics reported and logged are those of the weights kept
            val_metrics = evaluate(inner, valid, task, device, autocast_dtype, target_mean, target_std)
    final_state = {k: v.detach().cpu().clone() for k, v in unwrap_state_dict(inner).items()}
    return LoopResult(
        model=inner,
        state_dict=final_state,
        steps=step,
        resumed_from_step=resumed_from,
        state_sha256=state_sha256(final_state),
        samples_per_s=attempt_samples / seconds if attempt_samples and seconds > 0 else 0.0,
        seconds=seconds,
        device=str(device),
        precision=str(autocast_dtype).replace("torch.", "") if autocast_dtype else "fp32",
        data_placement=train.where,
        input_dim=input_dim,
        output_dim=output_dim,
        target_mean=target_mean,
        target_std=target_std,
        val_metrics=val_metrics,
        best_metric=best,
        stopped_early=stopped_early,
        checkpoint_uri=checkpoint_uri,
        checkpoint_writes=writer.writes if writer is not None else 0,
        checkpoint_seconds_last=store.last_write_seconds if store is not None else None,
    )


__all__ = [
    "MAXIMISED",
    "LoopResult",
    "TrainingData",
    "evaluate",
    "resolve_device",
    "resolve_precision",
    "train_loop",
]
