"""The features build per partition on a Dask cluster (`data.executor: dask`): the data files of clean/D's
snapshot are transformed by Prefect tasks on the cluster (a few tasks per worker, each a run of files), and the one features/D commit is made here, holding
the dataset's lake slot (loopline.features.partitioned: the same rows, bit for bit, and the same exactly-once
commit as a local build)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from loopline import features as core_features
from loopline.config import LifecycleConfig
from loopline.data.contract_registry import resolve_contract
from loopline.data.contracts import Contract
from loopline.features import partitioned
from tasks.common import lake_for, run_logger
from tasks.dask_runner import DaskFutures, group_for_cluster, map_on_cluster, retry_io
from tasks.locks import lake_slot


@task(
    name="transform-partitions",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=2,
    retry_condition_fn=retry_io,
)
def transform_partitions(
    parts: list[partitioned.FeaturePartition], contract: Contract, cfg: LifecycleConfig
) -> list[tuple[str, int]]:
    """Data files of clean/D through the fitted transform, each staged (on a Dask worker); commits nothing."""
    lake = lake_for(cfg)
    return [partitioned.transform_partition(lake, contract, cfg.features, part) for part in parts]


def build_features_on_dask(cfg: LifecycleConfig, refit: bool = False) -> dict:
    """Bring features/D up to date, transforming per partition on the flow's Dask cluster."""
    lake = lake_for(cfg)
    contract = resolve_contract(lake, cfg.data)
    runner = DaskFutures()

    def map_partitions(parts: list[partitioned.FeaturePartition]) -> list[tuple[str, int]]:
        run_logger().info("features/%s: %d partition(s) on the Dask cluster", contract.dataset, len(parts))
        groups = group_for_cluster(parts)
        staged = map_on_cluster(
            runner,
            transform_partitions,
            groups,
            contract,
            cfg,
            what=lambda g: f"features partition of {len(g)} file(s) from {g[0].file}",
        )
        return [one for group in staged for one in group]

    with lake_slot(contract.dataset, cfg.data.lake_slot_timeout_seconds):
        result = core_features.build_features(
            lake, contract, cfg.features, refit=refit, map_partitions=map_partitions
        )
    run_logger().info(
        "features/%s v%s: %d new batch(es), %d rows, transform %s",
        contract.dataset,
        result["features_version"],
        result["new_batches"],
        result["rows_added"],
        result["transform_version"],
    )
    return result
