"""Dynamic micro-batching: concurrent requests share model calls, each gets its own rows back."""

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from loopline.serving.batcher import MicroBatcher
from loopline.serving.inputs import Column, TypedRows


def rows_of(values: list[float]) -> TypedRows:
    return TypedRows({"x": Column(np.array(values, dtype=np.float64), None)}, len(values))


class Model:
    """Doubles its input; records the batch sizes it saw; can be made slow or failing."""

    def __init__(self, delay: float = 0.0, fail: bool = False):
        self.batches: list[int] = []
        self.delay = delay
        self.fail = fail
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, rows: TypedRows) -> np.ndarray:
        self.gate.wait(5)
        self.batches.append(rows.n_rows)
        if self.fail:
            raise RuntimeError("model exploded")
        if self.delay:
            threading.Event().wait(self.delay)
        return rows.columns["x"].values * 2


async def _run(model: Model, requests: list[list[float]], **kwargs) -> list:
    with ThreadPoolExecutor(1) as executor:
        batcher = MicroBatcher(
            model, executor=executor, **{"max_batch_rows": 1000, "max_wait_ms": 0, **kwargs}
        )
        batcher.start()
        try:
            return await asyncio.gather(
                *[batcher.submit(rows_of(r)) for r in requests], return_exceptions=True
            )
        finally:
            await batcher.stop()


def test_concurrent_requests_share_model_calls_and_get_their_own_rows():
    model = Model()
    model.gate.clear()  # hold the first call so the others queue behind it

    async def main():
        task = asyncio.ensure_future(_run(model, [[i, i + 0.5] for i in range(50)]))
        await asyncio.sleep(0.05)
        model.gate.set()
        return await task

    results = asyncio.run(main())
    for i, out in enumerate(results):
        assert out.tolist() == [2 * i, 2 * i + 1]
    assert sum(model.batches) == 100
    assert len(model.batches) < 50  # batched


def test_batches_respect_max_rows_but_never_split_a_request():
    model = Model()
    model.gate.clear()

    async def main():
        task = asyncio.ensure_future(_run(model, [[1.0] * 3] * 10 + [[1.0] * 12], max_batch_rows=7))
        await asyncio.sleep(0.05)
        model.gate.set()
        return await task

    results = asyncio.run(main())
    assert all(len(r) in (3, 12) for r in results)
    assert 12 in model.batches  # the big request alone
    assert all(b <= 7 for b in model.batches if b != 12)


def test_waits_for_requests_being_parsed_but_not_for_idle_clients():
    model = Model()
    pending = {"n": 0}

    async def main():
        with ThreadPoolExecutor(1) as executor:
            batcher = MicroBatcher(
                model, executor=executor, max_batch_rows=100, max_wait_ms=200, pending=lambda: pending["n"]
            )
            batcher.start()
            loop = asyncio.get_running_loop()
            started = loop.time()
            await batcher.submit(rows_of([1.0]))  # nobody else is parsing: no wait
            alone = loop.time() - started
            pending["n"] = 1  # another request is being parsed: the batch waits for it

            async def late():
                await asyncio.sleep(0.05)
                pending["n"] = 0
                return await batcher.submit(rows_of([2.0]))

            a, b = await asyncio.gather(batcher.submit(rows_of([3.0])), late())
            await batcher.stop()
            return alone, a, b

    alone, a, b = asyncio.run(main())
    assert alone < 0.15
    assert a.tolist() == [6.0] and b.tolist() == [4.0]
    assert model.batches == [1, 2]


def test_a_model_failure_fails_that_batch_only():
    model = Model(fail=True)
    results = asyncio.run(_run(model, [[1.0], [2.0]]))
    assert all(isinstance(r, RuntimeError) for r in results)


def test_stop_finishes_queued_requests_and_refuses_new_ones():
    model = Model(delay=0.01)

    async def main():
        with ThreadPoolExecutor(1) as executor:
            batcher = MicroBatcher(model, executor=executor, max_batch_rows=1, max_wait_ms=0)
            batcher.start()
            futures = [asyncio.ensure_future(batcher.submit(rows_of([float(i)]))) for i in range(5)]
            await asyncio.sleep(0)
            await batcher.stop()
            with pytest.raises(RuntimeError):
                await batcher.submit(rows_of([1.0]))
            return [f.result().tolist() for f in futures]

    assert asyncio.run(main()) == [[0.0], [2.0], [4.0], [6.0], [8.0]]


def test_small_batches_run_on_the_event_loop_and_large_ones_on_the_model_thread():
    threads: list[str] = []

    def model(rows: TypedRows) -> np.ndarray:
        threads.append(threading.current_thread().name)
        return rows.columns["x"].values

    async def main():
        with ThreadPoolExecutor(1, thread_name_prefix="model") as executor:
            batcher = MicroBatcher(
                model,
                executor=executor,
                max_batch_rows=100,
                max_wait_ms=0,
                inline_max_rows=4,
                call_seconds=0.0001,  # known to be fast
            )
            batcher.start()
            small = await batcher.submit(rows_of([1.0, 2.0]))
            large = await batcher.submit(rows_of([3.0] * 10))
            await batcher.stop()
            return small, large

    small, large = asyncio.run(main())
    assert small.tolist() == [1.0, 2.0] and large.tolist() == [3.0] * 10
    assert threads[0] == threading.current_thread().name and threads[1].startswith("model")


def test_everything_queued_goes_to_the_model_thread_in_one_hand_off():
    """Under load an event-loop turn is long: the model must not wait a turn between its calls."""
    model = Model()
    hand_offs = []

    class CountingExecutor(ThreadPoolExecutor):
        def submit(self, fn, /, *args, **kwargs):
            hand_offs.append(len(args[0]))  # the requests handed over
            return super().submit(fn, *args, **kwargs)

    async def main():
        with CountingExecutor(1) as executor:
            batcher = MicroBatcher(model, executor=executor, max_batch_rows=7, max_wait_ms=0)
            batcher.start()
            try:
                return await asyncio.gather(*[batcher.submit(rows_of([float(i)] * 3)) for i in range(10)])
            finally:
                await batcher.stop()

    results = asyncio.run(main())
    assert [r.tolist() for r in results] == [[2.0 * i] * 3 for i in range(10)]
    assert model.batches == [6] * 5  # calls still respect max_batch_rows
    assert hand_offs == [10]  # ... and all five went to the model thread at once, with every request


def test_a_model_runs_on_the_event_loop_only_once_it_is_known_to_be_fast():
    """An inline call blocks every other request (503 answers included): a model of unknown speed, or a slow
    one, is scored off the loop from its first call (the canary's slow challenger once stalled its champion's
    traffic for its first call's 150 ms); a fast one moves onto the loop once measured."""
    calls: dict[str, list[bool]] = {"slow": [], "fast": [], "warmed": []}

    def model(kind: str, wait: float):
        def score(rows: TypedRows) -> np.ndarray:
            calls[kind].append(threading.current_thread() is threading.main_thread())
            if wait:
                threading.Event().wait(wait)
            return rows.columns["x"].values

        return score

    async def run(kind: str, wait: float, call_seconds: float | None) -> None:
        with ThreadPoolExecutor(1) as executor:
            batcher = MicroBatcher(
                model(kind, wait),
                executor=executor,
                max_batch_rows=10,
                max_wait_ms=0,
                inline_max_rows=32,
                call_seconds=call_seconds,
            )
            batcher.start()
            try:
                for i in range(4):
                    await batcher.submit(rows_of([float(i)]))
            finally:
                await batcher.stop()

    asyncio.run(run("slow", 0.01, None))
    asyncio.run(run("fast", 0, None))
    asyncio.run(run("warmed", 0.01, 0.01))  # its warm-up call said slow: never inline
    assert calls["slow"] == [False] * 4
    assert calls["fast"] == [False, True, True, True]
    assert calls["warmed"] == [False] * 4
