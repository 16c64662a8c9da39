"""Tensors in the right place and a seeded, resumable batch order.

The split is read once into tensors: on the GPU when it fits (a gather per batch, no loader, no host
copies), pinned host memory otherwise (asynchronous copies), plain CPU tensors on CPU. The batch order
of epoch `e` is `randperm(n)` from a generator seeded with (seed, e), so the position in the data is
just (epoch, batch index): a resume regenerates the same permutation and continues mid-epoch.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

log = logging.getLogger(__name__)

# Share of free GPU memory the training split may take; the rest is for weights, activations, optimizer.
GPU_DATA_MEMORY_FRACTION = 0.5


@dataclass
class PlacedTensors:
    X: torch.Tensor
    y: torch.Tensor
    where: str  # "cuda", "pinned" or "cpu"


def place_tensors(X: np.ndarray, y: np.ndarray, device: torch.device) -> PlacedTensors:
    """Move a split to `device` if it fits in GPU memory, else pin it in host memory."""
    X_t = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
    y_t = torch.from_numpy(np.ascontiguousarray(y))
    if device.type != "cuda":
        return PlacedTensors(X_t, y_t, "cpu")
    free, _total = torch.cuda.mem_get_info(device)
    needed = X_t.nbytes + y_t.nbytes
    if needed <= GPU_DATA_MEMORY_FRACTION * free:
        return PlacedTensors(X_t.to(device), y_t.to(device), "cuda")
    log.info("split needs %.1f GiB, more than half the free GPU memory: pinned host memory", needed / 2**30)
    return PlacedTensors(X_t.pin_memory(), y_t.pin_memory(), "pinned")


class BatchOrder:
    """Which rows make batch `b` of epoch `e` on this rank. Pure function of (seed, n, sizes, rank)."""

    def __init__(self, n_rows: int, batch_size: int, seed: int, *, rank: int = 0, world_size: int = 1):
        if n_rows < world_size:
            raise ValueError(f"{n_rows} training rows cannot be shared by {world_size} processes")
        self.n_rows = n_rows
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        # every rank gets the same number of rows (the remainder of an epoch is skipped), so every rank
        # runs the same number of steps and the gradient all-reduce never waits for a missing peer
        self.rows_per_rank = n_rows // world_size
        self.steps_per_epoch = math.ceil(self.rows_per_rank / batch_size)
        self._epoch: int | None = None
        self._perm: torch.Tensor | None = None

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, batch index in the epoch) of the 0-based step."""
        return divmod(step, self.steps_per_epoch)

    def epoch_permutation(self, epoch: int, device: torch.device | None = None) -> torch.Tensor:
        if self._epoch != epoch or self._perm is None:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(self.n_rows, generator=generator)
            perm = perm[self.rank : self.rows_per_rank * self.world_size : self.world_size]
            self._perm = perm.to(device) if device is not None else perm
            self._epoch = epoch
        return self._perm

    def batch_indices(self, step: int, device: torch.device | None = None) -> torch.Tensor:
        epoch, batch = self.position(step)
        perm = self.epoch_permutation(epoch, device)
        return perm[batch * self.batch_size : (batch + 1) * self.batch_size]


def total_steps(max_steps: int | None, epochs: int | None, steps_per_epoch: int) -> int:
    """max_steps wins when both are set (TrainingConfig)."""
    if max_steps is not None:
        return max_steps
    if epochs is not None:
        return epochs * steps_per_epoch
    from loopline.errors import ConfigError

    raise ConfigError("training.max_steps or training.epochs must be set")
