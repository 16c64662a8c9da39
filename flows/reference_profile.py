"""The drift reference profile of a large table on the Dask cluster (`data.executor: dask`), as a flow: the
per-partition form of `loopline.monitoring.profile.build_reference_profile` (tasks/profile_dask.py)."""

from __future__ import annotations

from prefect import flow

import flows.heartbeats  # noqa: F401  (flow runs end without waiting on their heartbeat thread)
from loopline.config import LifecycleConfig


def profile_on_dask(
    cfg: LifecycleConfig, kind: str, name: str, numeric: list[str], categorical: list[str], **opts
) -> dict:
    """`profile-on-dask` on a DaskTaskRunner (`data.dask_address`, or a LocalCluster for the run)."""
    from tasks.dask_runner import dask_task_runner

    runner = dask_task_runner(cfg.data)
    return profile_on_dask_flow.with_options(task_runner=runner)(cfg, kind, name, numeric, categorical, opts)


@flow(name="profile-on-dask", log_prints=True)
def profile_on_dask_flow(
    config: LifecycleConfig,
    kind: str,
    name: str,
    numeric: list[str],
    categorical: list[str],
    opts: dict | None = None,
) -> dict:
    """Profile table `kind`/`name` per data file on the cluster; the profile is merged here."""
    from tasks.profile_dask import profile_table_on_dask

    return profile_table_on_dask(config, kind, name, numeric, categorical, **(opts or {}))
