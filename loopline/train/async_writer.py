"""Checkpoint writes off the training thread.

The state is snapshot synchronously (tensors copied to host memory, so later in-place updates of the
weights and optimizer cannot leak into it), then serialised and written by one background thread
while training continues. At most one write is in flight: a new checkpoint first waits for the last.
An error in a background write surfaces at the next `submit` or `wait`, never silently.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from loopline.train.checkpoint import CheckpointStore


def snapshot(value: Any) -> Any:
    """A deep copy with every tensor on the host, detached from autograd and from the live storage."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: snapshot(v) for k, v in value.items()}
    if isinstance(value, list):
        return [snapshot(v) for v in value]
    if isinstance(value, tuple):
        return tuple(snapshot(v) for v in value)
    return value


class AsyncCheckpointWriter:
    def __init__(self, store: CheckpointStore, *, background: bool = True):
        self.store = store
        self.background = background
        self._pool = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="loopline-ckpt") if background else None
        )
        self._pending: Future | None = None
        self.last_uri: str | None = None
        self.last_step: int | None = None
        self.writes = 0

    def submit(self, state: dict[str, Any]) -> None:
        self.wait()
        copy = snapshot(state)
        self.last_step = int(state["step"])
        if self._pool is None:
            self.last_uri = self.store.save(copy)
            self.writes += 1
            return
        self._pending = self._pool.submit(self.store.save, copy)

    def wait(self) -> str | None:
        """Block until the write in flight is durable; returns the newest checkpoint's URI."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self.last_uri = pending.result()  # re-raises a failed write here
            self.writes += 1
        return self.last_uri

    def close(self) -> None:
        try:
            self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
