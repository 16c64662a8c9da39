"""Prefect tasks on a Dask cluster (`data.executor: dask`), read back the way a committer can trust.

prefect-dask's DaskTaskRunner runs the tasks; `DaskFutures` reads each task's outcome from its Dask future, not
from the task run's state: when a worker dies the future raises (KilledWorker, a cancelled or lost key) while
the Prefect task run may stay Running for ever (prefect#21638), so a lost run is marked Crashed here and the
caller runs it again as a new task run; and every future is released as soon as its result is taken, so a
worker that dies later holds nothing the run still needs and Dask has nothing to recompute (prefect#15442:
a completed task run again). Used by the parallel ingest (tasks/ingest_dask.py), the per-partition features
build (tasks/features_dask.py) and drift profile (tasks/profile_dask.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from loopline.config import DataConfig
from loopline.data.parallel_ingest import ATTEMPTS, Outcome
from loopline.errors import LooplineError
from tasks.common import run_logger


def dask_task_runner(data: DataConfig):
    """prefect-dask's DaskTaskRunner: the scheduler at `data.dask_address`, else a LocalCluster of
    `data.dask_workers` single-threaded worker processes (the gate is Python: processes, not threads)."""
    from prefect_dask import DaskTaskRunner

    if data.dask_address:
        return DaskTaskRunner(address=data.dask_address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": data.dask_workers,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
        }
    )


def retry_io(task, task_run, state) -> bool:
    """Retry an I/O hiccup (S3, a network filesystem) in place; anything else is the file's failure."""
    try:
        state.result()
    except (OSError, TimeoutError) as exc:
        return not isinstance(exc, LooplineError)
    except BaseException:
        return False
    return False


class DaskFutures:
    """Prefect tasks submitted to the flow's DaskTaskRunner, each read back as an `Outcome` (loopline.data.
    parallel_ingest) from its Dask future.

    Each future's outcome is taken the moment it finishes (a done-callback on the Dask future, which then
    releases it), not when the committer gets round to it: a result still held by a worker is recomputed
    when that worker dies (prefect#15442), and the committer may be busy committing for seconds."""

    def __init__(self) -> None:
        import threading

        self._taken: dict[str, tuple[str, Any]] = {}  # dask key -> (status, state or exception)
        self._changed = threading.Condition()

    def submit(self, task, *args: Any, **kwargs: Any):
        """`task.submit(...)` on the flow's task runner (a DaskTaskRunner), its outcome taken when done."""
        handle = task.submit(*args, **kwargs)
        handle.wrapped_future.add_done_callback(self._take)
        return handle

    def _take(self, dask_future) -> None:
        """Runs on the Dask client's thread when the future is done: keep its outcome, release it."""
        try:
            if dask_future.status == "finished":
                taken = ("finished", dask_future.result())
            elif dask_future.status == "error":  # KilledWorker, or the task wrapper itself raised
                taken = ("error", dask_future.exception())
            else:  # cancelled, lost
                taken = (dask_future.status, None)
        except BaseException as exc:  # the result could not be fetched: as good as lost
            taken = ("error", exc)
        dask_future.release()
        with self._changed:
            self._taken[dask_future.key] = taken
            self._changed.notify_all()

    def wait(self, handles: list) -> list:
        with self._changed:
            while True:
                done = [h for h in handles if h.wrapped_future.key in self._taken]
                if done:
                    return done
                self._changed.wait(timeout=5)

    def outcome(self, handle) -> Outcome:
        from prefect.client.schemas.objects import State

        with self._changed:
            status, state = self._taken.pop(handle.wrapped_future.key)
        if status != "finished":
            why = f"{type(state).__name__}: {state}" if isinstance(state, BaseException) else status
            return self._lost(handle, why)
        if not isinstance(state, State):
            return self._lost(handle, f"no task state came back ({type(state).__name__})")
        if state.is_completed():
            try:
                return Outcome(value=state.result())
            except Exception as exc:  # a result that did not survive the trip
                return self._lost(handle, f"result unreadable: {exc}")
        if state.is_failed():
            exc = state.result(raise_on_failure=False)
            return Outcome(
                error=f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else str(exc)
            )
        return self._lost(handle, f"the task run ended {state.type.value}")

    def _lost(self, handle, why: str) -> Outcome:
        run_logger().warning(
            "task run %s lost on the cluster (%s): running it again", handle.task_run_id, why
        )
        _mark_crashed(handle.task_run_id, why)
        return Outcome(lost=why)

    def cancel(self, handles: Iterable) -> None:
        for h in handles:
            h.wrapped_future.cancel()


def _mark_crashed(task_run_id, why: str) -> None:
    """A task run whose worker died may stay Running in the API (prefect#21638): say what happened."""
    from prefect import get_client
    from prefect.states import Crashed

    try:
        with get_client(sync_client=True) as client:
            if not client.read_task_run(task_run_id).state.is_final():
                client.set_task_run_state(
                    task_run_id, Crashed(message=f"lost on the Dask cluster: {why}"), force=True
                )
    except Exception as exc:  # a bookkeeping nicety: never fail the ingest over it
        run_logger().warning("could not mark task run %s crashed: %s", task_run_id, exc)


def map_on_cluster(runner: DaskFutures, task, items: list, *args: Any, what: Callable[[Any], str]) -> list:
    """`task(item, *args)` for every item on the cluster; results in item order. A lost run runs again (up to
    ATTEMPTS times); a task that raises fails the whole map with an error naming the item (`what(item)`)."""
    results: list = [None] * len(items)
    lost = [0] * len(items)
    pending = {runner.submit(task, item, *args): i for i, item in enumerate(items)}
    try:
        while pending:
            for handle in runner.wait(list(pending)):
                i = pending.pop(handle)
                outcome = runner.outcome(handle)
                if outcome.error is not None:
                    raise RuntimeError(f"{what(items[i])} failed on the Dask cluster: {outcome.error}")
                if outcome.lost is None:
                    results[i] = outcome.value
                    continue
                lost[i] += 1
                if lost[i] >= ATTEMPTS:
                    raise RuntimeError(
                        f"{what(items[i])} was lost {lost[i]} times on the Dask cluster: {outcome.lost}"
                    )
                pending[runner.submit(task, items[i], *args)] = i
    finally:
        runner.cancel(list(pending))
    return results


PARTITIONS_PER_WORKER = 4  # a few tasks per worker: slack for uneven partitions, not a task per small file


def group_for_cluster(items: list) -> list[list]:
    """`items` in contiguous groups, PARTITIONS_PER_WORKER groups per worker of the flow's Dask cluster."""
    from prefect.context import FlowRunContext

    workers = 1
    context = FlowRunContext.get()
    client = getattr(getattr(context, "task_runner", None), "client", None)
    if client is not None:
        workers = max(1, len(client.scheduler_info().get("workers", {})))
    size = max(1, -(-len(items) // (workers * PARTITIONS_PER_WORKER)))
    return [items[i : i + size] for i in range(0, len(items), size)]
