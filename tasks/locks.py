"""One writer of a dataset's tables at a time where Prefect runs the data plane: the Prefect global concurrency
limit `lake-<dataset>` (one slot, created on first use), held by the tasks that write raw/D, quarantine/D,
clean/D, the batch ledger and features/D (ingest, features).

Serialisation has two layers, as for promotions: this limit makes concurrent runs (a flow's ingest, the features
trigger, the retrain new-data trigger, the lifecycle's own build, on any worker or host) queue for a dataset
instead of racing, so none of them redoes work after a conflict; in the core, every commit is re-checked at
commit time (loopline.storage.delta, loopline.data.clean_commit, loopline.features.table), so two plain
processes are safe without Prefect. The wait is bounded (data.lake_slot_timeout_seconds): out of time, a
WaitTimeoutError names the limit and what to do.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tasks.common import ensure_global_limit, hold_slots, run_logger, slug

SETTING = "data.lake_slot_timeout_seconds"


def lake_limit_name(dataset: str) -> str:
    return f"lake-{slug(dataset)}"


@contextmanager
def lake_slot(dataset: str, timeout_s: float) -> Iterator[None]:
    """The one slot of `lake-<dataset>`, held while the block writes the dataset's tables; waits at most
    `timeout_s` for it (WaitTimeoutError naming the limit after that)."""
    from prefect import get_client

    name = lake_limit_name(dataset)
    with get_client(sync_client=True) as client:
        ensure_global_limit(client, name, 1)  # a missing limit would limit nothing
    run_logger().info("waiting for the lake slot of dataset %s (limit %r)", dataset, name)
    with hold_slots(name, 1, timeout_s, SETTING, f"write the tables of dataset {dataset!r}"):
        yield
