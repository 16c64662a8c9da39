"""Dynamic micro-batching: concurrent requests for one model become one model call.

Requests append their checked rows and await a future. One worker per loaded model takes everything
queued, as model calls of at most `max_batch_rows` (a request is never split), hands them to the model
thread in one go and gives each request its slice. One hand-off per event-loop turn matters under load:
a turn then takes long (many requests to parse), and a model that got one call per turn would idle
between calls while the queue fills. While the calls run, new requests queue up, so under load batches
form by themselves. Before a call
the worker waits up to `max_wait_ms` for more rows, but only while other requests are being parsed
(`pending()`): a lone client never pays the wait. A batch of at most `inline_max_rows` rows is scored on
the event loop itself: for a few rows the model call is shorter than waking the model thread. Only while
the model is fast, though: the batcher keeps a moving average of the model's call time (measured on
whichever thread ran it) and scores on the model thread whenever it is over `INLINE_MAX_SECONDS`, since an
inline call blocks every other request, health checks and 503 answers included.

The queue is bounded in rows (`max_queue_rows`): a request that would take it past the bound is refused at
once with `QueueFull` (the server answers 503 with Retry-After) instead of waiting behind more work than the
model can do before the client gives up. A request larger than the bound still goes when the queue is empty,
so any single request the body limit admits can be served.
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
INLINE_MAX_SECONDS = 0.002  # a model call longer than this never runs on the event loop


class QueueFull(Exception):
    """The batcher's queue holds `max_queue_rows` already: come back later (503 + Retry-After)."""


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
        max_queue_rows: int | None = None,
    ):
        self._score = score
        self._executor = executor
        self.max_batch_rows = max_batch_rows
        self.max_wait_s = max_wait_ms / 1000.0
        self._pending = pending
        self._on_batch = on_batch
        self.inline_max_rows = inline_max_rows
        self.max_queue_rows = max_queue_rows
        self.call_seconds: float | None = None  # moving average of the model's call time (None: not seen)
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

    @property
    def full(self) -> bool:
        """The queue is at its bound: a request can be refused before its body is even read."""
        return self.max_queue_rows is not None and self.queued_rows >= self.max_queue_rows

    async def submit(self, rows: TypedRows) -> np.ndarray:
        """Predictions for `rows` (one per row), scored together with whatever else is queued."""
        if self._stopping:
            raise RuntimeError("this model is being unloaded")
        bound = self.max_queue_rows
        if bound is not None and self.queued_rows and self.queued_rows + rows.n_rows > bound:
            raise QueueFull(f"{self.queued_rows} rows are waiting for the model (bound {bound})")
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
            batches = []
            while self._items:  # everything queued, in model calls of at most max_batch_rows
                batch = self._take()
                if batch:
                    batches.append((batch, concat_rows([r for r, _ in batch])))
            if not batches:
                continue
            fast = self.call_seconds is None or self.call_seconds <= INLINE_MAX_SECONDS
            if len(batches) == 1 and batches[0][1].n_rows <= self.inline_max_rows and fast:
                # a small batch costs less than handing it to the model thread and waking it
                outcomes = self._score_all([rows for _, rows in batches])
            else:
                # one hand-off for all of them: under load an event-loop turn is long, and the model
                # must not wait a turn between calls
                outcomes = await loop.run_in_executor(
                    self._executor, self._score_all, [rows for _, rows in batches]
                )
            for (batch, rows), (outcome, seconds) in zip(batches, outcomes, strict=True):
                self._settle(batch, rows, outcome, seconds)

    def _score_all(self, batches: list[TypedRows]) -> list[tuple[np.ndarray | Exception, float]]:
        """Each batch scored on its own (one failing batch fails only its requests), with its time."""
        outcomes: list[tuple[np.ndarray | Exception, float]] = []
        for rows in batches:
            started = time.perf_counter()
            try:
                outcomes.append((self._timed_score(rows), time.perf_counter() - started))
            except Exception as exc:
                outcomes.append((exc, time.perf_counter() - started))
        return outcomes

    def _settle(self, batch, rows: TypedRows, outcome, seconds: float) -> None:
        if isinstance(outcome, Exception):  # the model failed: every request of the batch gets the error
            log.error("model call failed for a batch of %d rows", rows.n_rows, exc_info=outcome)
            for _, future in batch:
                if not future.done():
                    future.set_exception(outcome)
            return
        if self._on_batch is not None:
            self._on_batch(rows.n_rows, len(batch), seconds)
        start = 0
        for part, future in batch:
            end = start + part.n_rows
            if not future.done():  # a client that went away leaves a cancelled future
                future.set_result(outcome[start:end])
            start = end

    def _timed_score(self, rows: TypedRows) -> np.ndarray:
        started = time.perf_counter()
        predictions = self._score(rows)
        seconds = time.perf_counter() - started
        average = self.call_seconds
        self.call_seconds = seconds if average is None else 0.8 * average + 0.2 * seconds
        return predictions

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
