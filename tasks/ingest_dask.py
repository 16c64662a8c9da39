"""Tasks of a parallel ingest (`data.executor: dask`): scanning and validating files run as Prefect tasks on a
Dask cluster through prefect-dask's DaskTaskRunner; committing runs here, in the flow process, one batch at a
time inside the dataset's lake slot (the core loop: loopline.data.parallel_ingest).

The loop's runner (`IngestRunner`) reads every task's real outcome from its Dask future (tasks/dask_runner.py:
prefect#21638, prefect#15442).
"""

from __future__ import annotations

import uuid
from contextlib import ExitStack
from datetime import datetime
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from loopline.config import LifecycleConfig
from loopline.data import parallel
from loopline.data.contract_registry import ingest_contract, register_contract
from loopline.data.contracts import Contract
from loopline.data.ingest import BatchResult
from loopline.data.parallel_ingest import FileFailure, ingest_in_parallel
from loopline.data.staged_commit import StagedOutputError, commit_staged
from loopline.errors import LooplineError
from loopline.monitoring.data_metrics import publish_ingest_metrics
from tasks.common import lake_for, run_logger
from tasks.dask_runner import DaskFutures, retry_io
from tasks.ingest import report_batch
from tasks.locks import lake_slot
from tasks.progress import report as report_progress


class IngestFailedError(LooplineError):
    """Files that failed on the cluster: not a verdict of the gate (exit 1, one paragraph naming each file).
    The other files landed; `results` holds every file's result."""

    exit_code = 1

    def __init__(self, message: str, results: list[dict]):
        super().__init__(message)
        self.results = results


@task(name="scan-files", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2, retry_condition_fn=retry_io)
def scan_files(uris: list[str], contract: Contract, cfg: LifecycleConfig) -> list[parallel.FileScan]:
    """Fingerprint files and read their ids (on a Dask worker)."""
    return parallel.scan_files(uris, contract, lake_for(cfg), cfg)


@task(
    name="validate-file",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=2,
    retry_condition_fn=retry_io,
)
def validate_file(
    uri: str,
    contract: Contract,
    cfg: LifecycleConfig,
    batch_id: str,
    stage_root: str,
    snapshot_version: int | None,
    run_ids: np.ndarray,
    ingested_at: datetime,
    want_clean_ids: bool,
) -> parallel.StagedBatch:
    """Validate a file and stage its rows (on a Dask worker); commits nothing."""
    return parallel.gate_file(
        uri,
        contract,
        lake_for(cfg),
        cfg,
        batch_id=batch_id,
        stage_root=stage_root,
        snapshot_version=snapshot_version,
        run_ids=run_ids,
        ingested_at=ingested_at,
        want_clean_ids=want_clean_ids,
    )


# idempotent like ingest-batch; a worker's incomplete output is no I/O hiccup: the loop re-runs its gate
@task(
    name="commit-batch",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=[5, 15],
    retry_condition_fn=lambda t, r, s: _not_staged_or_user_error(s),
)
def commit_batch(staged: parallel.StagedBatch, contract: Contract, cfg: LifecycleConfig):
    """Commit one staged batch in the flow process (its caller holds the dataset's lake slot)."""
    return commit_staged(lake_for(cfg), contract, cfg, staged)


class _LakeSlot:
    """The dataset's lake slot, taken for a burst of commits and let go whenever the committer waits for the
    cluster: one writer at a time as before, without a slot round trip per batch (~0.5 s each, measured)."""

    def __init__(self, dataset: str, timeout_s: float):
        self.dataset, self.timeout_s = dataset, timeout_s
        self._held: ExitStack | None = None

    def hold(self) -> None:
        if self._held is None:
            held = ExitStack()
            held.enter_context(lake_slot(self.dataset, self.timeout_s))
            self._held = held

    def release(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            held.close()


def _not_staged_or_user_error(state) -> bool:
    try:
        state.result()
    except (LooplineError, StagedOutputError):
        return False
    except BaseException:
        return True
    return False


class IngestRunner(DaskFutures):
    """The parallel ingest's runner: scans and gates as Prefect tasks on the cluster."""

    def __init__(self, contract: Contract, cfg: LifecycleConfig):
        super().__init__()
        self.contract, self.cfg = contract, cfg

    def scan(self, uris: list[str]):
        return self.submit(scan_files, uris, self.contract, self.cfg)

    def gate(self, uri: str, **kwargs: Any):
        return self.submit(validate_file, uri, self.contract, self.cfg, **kwargs)


def ingest_files_on_dask(files: list[str], cfg: LifecycleConfig) -> list[dict]:
    """Ingest `files` with validation on the flow's Dask cluster and commits here. Raises IngestFailedError
    naming every file that failed on the cluster, after the others landed."""
    lake = lake_for(cfg)
    contract = ingest_contract(lake, cfg.data)
    if cfg.data.allow_incompatible_contract:
        from loopline.data.clean_commit import check_retype

        check_retype(lake, contract)
    registered = register_contract(lake, contract, allow_incompatible=cfg.data.allow_incompatible_contract)
    out: list[dict] = []

    slot = _LakeSlot(contract.dataset, cfg.data.lake_slot_timeout_seconds)

    def commit(staged: parallel.StagedBatch):
        slot.hold()
        return commit_batch(staged, contract, cfg)

    def report(result: BatchResult, failed: bool) -> None:
        result.contract_version = registered.version
        if failed:
            run_logger().error("%s", result.reason)
            emitted = False
        else:
            emitted = report_batch(result)
        report_progress("ingest.batch", source=result.source, state="done", rows_in=result.rows_in)
        out.append({**result.as_dict(), "event_emitted": emitted})

    for stale in parallel.remove_stale_stages(lake):
        run_logger().info("removed the staging folder of an earlier run that did not finish: %s", stale)
    root = parallel.stage_root(lake, uuid.uuid4().hex[:16])
    try:
        _, failures = ingest_in_parallel(
            files,
            contract,
            lake,
            cfg,
            IngestRunner(contract, cfg),
            stage_root=root,
            commit=commit,
            report=report,
            idle=slot.release,
        )
    finally:
        slot.release()
        publish_ingest_metrics(lake, cfg, contract)  # the ledger's counts for Prometheus; never fails
    if failures:
        raise IngestFailedError(_failure_message(failures, len(files)), out)
    return out


def _failure_message(failures: list[FileFailure], total: int) -> str:
    named = "; ".join(f"{f.uri}: {f.error}" for f in failures)
    return (
        f"{len(failures)} of {total} file(s) failed on the Dask cluster and were not ingested (the other files "
        f"landed; ingest the source again to retry them, what landed is a no-op then): {named}"
    )
