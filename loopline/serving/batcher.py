"""Dynamic micro-batching: concurrent requests for one model become one model call.

Requests append their checked rows and await a future. One worker per loaded model takes everything
queued (up to `max_batch_rows`), scores it in one call on the model thread, and hands each request its
slice. While a call runs, new requests queue up, so under load batches form by themselves. Before a call
the worker waits up to `max_wait_ms` for more rows, but only while other requests are being parsed
(`pending()`): a lone client never pays the wait. A batch of at most `inline_max_rows` rows is scored on
the event loop itself: for a few rows the model call is shorter than waking the model thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor

import numpy as np

from loopline.serving.inputs import TypedRows, concat_rows

log = logging.getLogger(__name__)

ScoreFn = Callable[[TypedRows], np.ndarray]


class MicroBatcher:
    def __init__(
        self,
        score: ScoreFn,
        *,
        executor: Executor,
        max_batch_rows: int,
        max_wait_ms: float,
        pending: Callable[[], int] = lambda: 0,
        on_batch: Callable[[int, int, float], None] | None = None,
        inline_max_rows: int = 0,
    ):
        self._score = score
        self._executor = executor
        self.max_batch_rows = max_batch_rows
        self.max_wait_s = max_wait_ms / 1000.0
        self._pending = pending
        self._on_batch = on_batch
        self.inline_max_rows = inline_max_rows
        self._items: deque[tuple[TypedRows, asyncio.Future]] = deque()
        self.queued_rows = 0
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Score what is queued, then end the worker."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task

    async def submit(self, rows: TypedRows) -> np.ndarray:
        """Predictions for `rows` (one per row), scored together with whatever else is queued."""
        if self._stopping:
            raise RuntimeError("this model is being unloaded")
        future = asyncio.get_running_loop().create_future()
        self._items.append((rows, future))
        self.queued_rows += rows.n_rows
        self._wake.set()
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._items:
                if self._stopping:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._gather(loop)
            batch = self._take()
            if not batch:
                continue
            rows = concat_rows([r for r, _ in batch])
            started = time.perf_counter()
            try:
                if rows.n_rows <= self.inline_max_rows:
                    # a small batch costs less than handing it to the model thread and waking it
                    predictions = self._score(rows)
                else:
                    predictions = await loop.run_in_executor(self._executor, self._score, rows)
            except Exception as exc:  # the model failed: every request of the batch gets the error
                log.exception("model call failed for a batch of %d rows", rows.n_rows)
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            if self._on_batch is not None:
                self._on_batch(rows.n_rows, len(batch), time.perf_counter() - started)
            start = 0
            for part, future in batch:
                end = start + part.n_rows
                if not future.done():  # a client that went away leaves a cancelled future
                    future.set_result(predictions[start:end])
                start = end

    async def _gather(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait up to max_wait for more rows while other requests are still being parsed."""
        if self.max_wait_s <= 0:
            return
        deadline = loop.time() + self.max_wait_s
        while self.queued_rows < self.max_batch_rows and self._pending() > 0 and not self._stopping:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                return

    def _take(self) -> list[tuple[TypedRows, asyncio.Future]]:
        """Queued requests up to max_batch_rows (a single larger request goes alone, never split)."""
        batch: list[tuple[TypedRows, asyncio.Future]] = []
        n = 0
        while self._items:
            rows, future = self._items[0]
            if batch and n + rows.n_rows > self.max_batch_rows:
                break
            self._items.popleft()
            self.queued_rows -= rows.n_rows
            if future.done():  # cancelled while queued: do not score it
                continue
            batch.append((rows, future))
            n += rows.n_rows
        return batch
