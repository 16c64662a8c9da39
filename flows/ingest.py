"""Ingest flow: every file of a source through the validation gate into raw, clean and quarantine."""

from __future__ import annotations

from prefect import flow

import flows.heartbeats  # noqa: F401  (flow runs end without waiting on their heartbeat thread)
from loopline.config import LifecycleConfig, resolve_config
from loopline.data.ingest import summarise_dicts
from loopline.data.synthetic import DEMO_DATASET
from loopline.errors import ConfigError, DataQualityError
from loopline.packaging.registry import contract_dataset
from tasks.ingest import ingest_batch, list_source_files, synthesise_source


@flow(name="ingest", log_prints=True)
def ingest_flow(config: LifecycleConfig | None = None) -> list[dict]:
    """Ingest `config.data.source` (a file, folder or s3:// URI); with no source, the synthetic demo batch."""
    return ingest_stage(resolve_config(config))


def ingest_stage(cfg: LifecycleConfig) -> list[dict]:
    """The ingest flow's body: its tasks run in the caller's flow run (the lifecycle's, or the ingest flow's)."""
    # Extract: which files (the synthetic source makes only the demo dataset)
    if not cfg.data.source and contract_dataset(cfg) != DEMO_DATASET:
        raise ConfigError(
            f"no source to ingest for dataset {contract_dataset(cfg)!r}: pass --source FILE (a file, folder or "
            "s3:// prefix); the synthetic source makes only the demo dataset"
        )
    source = cfg.data.source or synthesise_source(cfg)
    files = list_source_files(source, cfg)
    # Validate + load: one batch per file, in order (ids are first-arrival-wins across batches); on Dask the
    # files are validated in parallel and this process commits them, in the same order with the same result
    if cfg.data.executor == "dask" and len(files) > 1:
        results = ingest_on_dask(files, cfg)
    else:
        results = [ingest_batch(uri, cfg, in_folder=len(files) > 1) for uri in files]
    # Decide: a rejected batch fails the run (the good ones have landed; the summary names the bad ones)
    rejected = [r for r in results if not r["accepted"]]
    if rejected:
        reasons = "; ".join(_named(r["source"], str(r["reason"])) for r in rejected)
        raise DataQualityError(
            f"{len(rejected)} of {len(results)} batch(es) rejected: {reasons}",
            summary=summarise_dicts(results),
        )
    return results


def _named(source: str, reason: str) -> str:
    """A rejected batch's reason with its file named once (a column problem names it already)."""
    return reason if reason.startswith(f"{source}:") else f"{source}: {reason}"


def ingest_on_dask(files: list[str], cfg: LifecycleConfig) -> list[dict]:
    """The files through `ingest-on-dask`, a subflow on a DaskTaskRunner (`data.dask_address`, or a LocalCluster
    of `data.dask_workers` workers that lives as long as the subflow)."""
    from tasks.dask_runner import dask_task_runner

    return ingest_on_dask_flow.with_options(task_runner=dask_task_runner(cfg.data))(files, cfg)


@flow(name="ingest-on-dask", log_prints=True)
def ingest_on_dask_flow(files: list[str], config: LifecycleConfig) -> list[dict]:
    """Scan and validate `files` on the Dask cluster, commit them here in order (tasks/ingest_dask.py)."""
    from tasks.ingest_dask import ingest_files_on_dask

    return ingest_files_on_dask(files, config)
