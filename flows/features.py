"""Features flow: bring features/D up to date with clean/D (incremental, cached on clean's version)."""

from __future__ import annotations

from prefect import flow

import flows.heartbeats  # noqa: F401  (flow runs end without waiting on their heartbeat thread)
from loopline.config import LifecycleConfig, resolve_config
from tasks import stage_cache
from tasks.features import build_features


@flow(name="features", log_prints=True)
def features_flow(
    config: LifecycleConfig | None = None, refit: bool = False, dataset: str | None = None
) -> dict:
    """`dataset`: the dataset to build (the `features` trigger passes the event's); default: the config's."""
    return features_stage(resolve_config(config).for_dataset(dataset), refit)


def features_stage(cfg: LifecycleConfig, refit: bool = False) -> dict:
    """The features flow's body: its task runs in the caller's flow run (the lifecycle's, or its own)."""
    if cfg.data.executor == "dask":  # per partition on the cluster, committed here: the same features/D
        return features_on_dask(cfg, refit)
    state = build_features(cfg, refit=refit, return_state=True)
    result = state.result()
    # Prefect's cache hit hands back the first build's result: marked, so no one reads it as new batches
    return stage_cache.cached(result) if state.name == "Cached" and isinstance(result, dict) else result


def features_on_dask(cfg: LifecycleConfig, refit: bool = False) -> dict:
    """The build through `features-on-dask`, a subflow on a DaskTaskRunner (`data.dask_address`, or a
    LocalCluster of `data.dask_workers` workers that lives as long as the subflow)."""
    from tasks.dask_runner import dask_task_runner

    return features_on_dask_flow.with_options(task_runner=dask_task_runner(cfg.data))(cfg, refit)


@flow(name="features-on-dask", log_prints=True)
def features_on_dask_flow(config: LifecycleConfig, refit: bool = False) -> dict:
    """Transform clean/D per data file on the Dask cluster; one features/D commit here (tasks/features_dask.py)."""
    from tasks.features_dask import build_features_on_dask

    return build_features_on_dask(config, refit=refit)
