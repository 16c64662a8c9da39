"""Dynamic micro-batching: concurrent requests for one model become one model call.

Requests append their parsed rows and await a future. One worker per loaded model takes everything
queued and hands it to the model thread in one go: there the rows of all those requests are checked
against the contract in one pass (`check`, `InputChecker.check_batch`: the per-column cost of the checks
is paid once per turn, not once per request; a request that fails gets its own 422 and only the rest go
on), then scored in model calls of at most `max_batch_rows` (a request is never split), and each request
gets its slice. After each model call its rows go to `on_scored` in one piece (the inference log takes
them as one entry). One hand-off per event-loop turn matters under load: a turn then takes long (many
requests to parse), and a model that got one call per turn would idle between calls while the queue
fills. While the calls run, new requests queue up, so under load batches form by themselves. Before a call
the worker waits up to `max_wait_ms` for more rows, but only while other requests are being parsed
(`pending()`): a lone client never pays the wait. A batch of at most `inline_max_rows` rows is checked and
scored on the event loop itself: for a few rows that is shorter than waking the model thread. Only while
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
from typing import Any

import numpy as np

from loopline.serving.inputs import TypedRows, concat_rows, slice_rows

log = logging.getLogger(__name__)

ScoreFn = Callable[[TypedRows], np.ndarray]
# a batch's payloads -> (the rows of those that pass, in order; per payload None or its error)
CheckFn = Callable[[list[Any]], tuple[TypedRows, list[Exception | None]]]
# (scored rows, their predictions, (tag, rows) of each request in row order): after every model call
ScoredFn = Callable[[TypedRows, np.ndarray, list[tuple[Any, int]]], None]
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
        check: CheckFn | None = None,
        on_scored: ScoredFn | None = None,
        call_seconds: float | None = None,
    ):
        self._score = score
        self._check = check or _typed_already
        self._on_scored = on_scored
        self._executor = executor
        self.max_batch_rows = max_batch_rows
        self.max_wait_s = max_wait_ms / 1000.0
        self._pending = pending
        self._on_batch = on_batch
        self.inline_max_rows = inline_max_rows
        self.max_queue_rows = max_queue_rows
        # moving average of the model's call time; None: not known yet, and an unknown model is never
        # scored on the event loop (a slow first call there would stall every other request)
        self.call_seconds = call_seconds
        self._items: deque[_Request] = deque()
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

    async def submit(self, rows: Any, tag: Any = None) -> np.ndarray:
        """Predictions for `rows` (one per row), scored together with whatever else is queued. `rows` are
        TypedRows, or what `check` takes (a request's parsed columns); a failed check raises its error
        here. `tag` goes with the rows to `on_scored`."""
        if self._stopping:
            raise RuntimeError("this model is being unloaded")
        n = rows.n_rows
        bound = self.max_queue_rows
        if bound is not None and self.queued_rows and self.queued_rows + n > bound:
            raise QueueFull(f"{self.queued_rows} rows are waiting for the model (bound {bound})")
        future = asyncio.get_running_loop().create_future()
        self._items.append(_Request(rows, n, future, tag))
        self.queued_rows += n
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
            requests = self._take_all()
            if not requests:
                continue
            rows = sum(r.n_rows for r in requests)
            fast = self.call_seconds is not None and self.call_seconds <= INLINE_MAX_SECONDS
            if rows <= self.inline_max_rows and rows <= self.max_batch_rows and fast:
                # a small batch costs less than handing it to the model thread and waking it
                work = self._work(requests)
            else:
                # one hand-off for all of them: under load an event-loop turn is long, and the model
                # must not wait a turn between calls
                work = await loop.run_in_executor(self._executor, self._work, requests)
            self._settle(requests, work)

    def _work(self, requests: list[_Request]) -> _Work:
        """Check every request taken at once (the per-column cost of the checks is paid once per turn),
        then score those that pass in model calls of at most max_batch_rows (a request is never split;
        a failing call fails only its requests)."""
        try:
            rows, errors = self._check([r.rows for r in requests])
        except Exception as exc:  # a bug in a check must not hang the requests
            return _Work([], [None] * len(requests), exc)
        passed = [r for r, error in zip(requests, errors, strict=True) if error is None]
        calls: list[_Call] = []
        i = start = 0
        while i < len(passed):
            j, n = i + 1, passed[i].n_rows
            while j < len(passed) and n + passed[j].n_rows <= self.max_batch_rows:
                n += passed[j].n_rows
                j += 1
            part = rows if n == rows.n_rows else slice_rows(rows, start, start + n)
            started = time.perf_counter()
            try:
                result: np.ndarray | Exception = self._timed_score(part)
            except Exception as exc:
                result = exc
            calls.append(_Call(passed[i:j], part, result, time.perf_counter() - started))
            i, start = j, start + n
        return _Work(calls, errors, None)

    def _settle(self, requests: list[_Request], work: _Work) -> None:
        for request, error in zip(requests, work.errors, strict=True):
            if error is not None and not request.future.done():  # its own 422
                request.future.set_exception(error)
        if work.failure is not None:
            log.error("checking a batch of %d requests failed", len(requests), exc_info=work.failure)
            for request in requests:
                if not request.future.done():
                    request.future.set_exception(work.failure)
        for call in work.calls:
            self._settle_call(call)

    def _settle_call(self, call: _Call) -> None:
        result = call.result
        if isinstance(result, Exception):  # the model failed: every request of the call gets the error
            log.error("model call failed for a batch of %d rows", call.rows.n_rows, exc_info=result)
            for request in call.requests:
                if not request.future.done():
                    request.future.set_exception(result)
            return
        if self._on_batch is not None:
            self._on_batch(call.rows.n_rows, len(call.requests), call.seconds)
        start = 0
        for request in call.requests:
            end = start + request.n_rows
            if not request.future.done():  # a client that went away leaves a cancelled future
                request.future.set_result(result[start:end])
            start = end
        if self._on_scored is not None:
            try:
                self._on_scored(call.rows, result, [(r.tag, r.n_rows) for r in call.requests])
            except Exception:  # logging must never fail an answered request
                log.exception("on_scored failed for a batch of %d rows", call.rows.n_rows)

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

    def _take_all(self) -> list[_Request]:
        """Everything queued, but requests cancelled while queued (their clients went away)."""
        items, self._items = self._items, deque()
        self.queued_rows = 0
        return [r for r in items if not r.future.done()]


class _Request:
    __slots__ = ("rows", "n_rows", "future", "tag")

    def __init__(self, rows: Any, n_rows: int, future: asyncio.Future, tag: Any):
        self.rows, self.n_rows, self.future, self.tag = rows, n_rows, future, tag


class _Call:
    """One model call: its requests, their rows, the predictions (or the model's exception), seconds."""

    __slots__ = ("requests", "result", "rows", "seconds")

    def __init__(self, requests, rows, result, seconds):
        self.requests, self.rows, self.result, self.seconds = requests, rows, result, seconds


class _Work:
    """One turn's requests: each one's check error (or None), the model calls, and an unexpected failure
    of the check itself (then no request can be answered)."""

    __slots__ = ("calls", "errors", "failure")

    def __init__(self, calls, errors, failure):
        self.calls, self.errors, self.failure = calls, errors, failure


def _typed_already(parts: list[TypedRows]) -> tuple[TypedRows, list[Exception | None]]:
    return concat_rows(parts), [None] * len(parts)
