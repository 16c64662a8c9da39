"""The drift reference profile of a large Delta table, per partition on a Dask cluster: each data file of the
snapshot is sorted and counted by a Prefect task on the cluster, and the profile is merged here
(loopline.monitoring.partitioned: equal to the single-process profile, bit for bit)."""

from __future__ import annotations

import uuid
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from loopline.config import LifecycleConfig
from loopline.data.parallel import remove_stage
from loopline.errors import NotReadyError
from loopline.monitoring import partitioned
from loopline.storage import delta
from loopline.storage.partitions import snapshot_files
from tasks.common import lake_for, run_logger
from tasks.dask_runner import DaskFutures, group_for_cluster, map_on_cluster, retry_io


@task(
    name="profile-partition",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=2,
    retry_condition_fn=retry_io,
)
def profile_partition(
    part: partitioned.ProfilePartition, cfg: LifecycleConfig
) -> partitioned.PartitionSummary:
    """One data file's columns sorted and counted, the sorted values staged (on a Dask worker)."""
    return partitioned.profile_partition(lake_for(cfg), part)


def profile_table_on_dask(
    cfg: LifecycleConfig,
    kind: str,
    name: str,
    numeric: list[str],
    categorical: list[str],
    files_per_partition: int | None = None,
    **opts: Any,
) -> dict:
    """The reference profile of table `kind`/`name` (its latest snapshot), per partition of
    `files_per_partition` data files (default: a few partitions per worker) on the flow's Dask cluster.
    `opts`: bins, cdf_bins, raw_max_rows."""
    lake = lake_for(cfg)
    uri = lake.table_uri(kind, name)
    table = delta.open_table(lake, uri)
    if table is None:
        raise NotReadyError(f"there is no {kind}/{name} table to profile yet")
    root = f"{lake.root.rstrip('/')}/_staging/profile/{uuid.uuid4().hex[:16]}"
    files = snapshot_files(delta.dataset(table))
    if files_per_partition is None:
        files_per_partition = len(group_for_cluster(files)[0]) if files else 1
    parts = [
        partitioned.ProfilePartition(
            index=i,
            table_uri=uri,
            version=table.version(),
            files=tuple(files[i : i + files_per_partition]),
            numeric=tuple(numeric),
            categorical=tuple(categorical),
            stage_root=root,
        )
        for i in range(0, len(files), max(1, files_per_partition))
    ]
    run_logger().info("profile of %s/%s v%d: %d partition(s)", kind, name, table.version(), len(parts))
    try:
        summaries = map_on_cluster(
            DaskFutures(), profile_partition, parts, cfg, what=lambda p: f"profile partition {p.files[0]}..."
        )
        return partitioned.merge_profile(lake, summaries, numeric, categorical, **opts)
    finally:
        remove_stage(lake, root)
