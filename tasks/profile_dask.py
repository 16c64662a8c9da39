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
from tasks.dask_runner import DaskFutures, map_on_cluster, retry_io


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
    cfg: LifecycleConfig, kind: str, name: str, numeric: list[str], categorical: list[str], **opts: Any
) -> dict:
    """The reference profile of table `kind`/`name` (its latest snapshot), per partition on the flow's Dask
    cluster. `opts`: bins, cdf_bins, raw_max_rows."""
    lake = lake_for(cfg)
    uri = lake.table_uri(kind, name)
    table = delta.open_table(lake, uri)
    if table is None:
        raise NotReadyError(f"there is no {kind}/{name} table to profile yet")
    root = f"{lake.root.rstrip('/')}/_staging/profile/{uuid.uuid4().hex[:16]}"
    parts = [
        partitioned.ProfilePartition(
            index=i,
            table_uri=uri,
            version=table.version(),
            file=path,
            numeric=tuple(numeric),
            categorical=tuple(categorical),
            stage_root=root,
        )
        for i, path in enumerate(snapshot_files(delta.dataset(table)))
    ]
    run_logger().info("profile of %s/%s v%d: %d partition(s)", kind, name, table.version(), len(parts))
    try:
        summaries = map_on_cluster(
            DaskFutures(), profile_partition, parts, cfg, what=lambda p: f"profile partition {p.file}"
        )
        return partitioned.merge_profile(lake, summaries, numeric, categorical, **opts)
    finally:
        remove_stage(lake, root)
