"""A source's files ingested in parallel, committed by one committer: the loop the flow process runs.

    scans   -> every file's batch id and ids, on the workers          (Extract)
    gates   -> each file validated and staged, on the workers, in the order GatePlan allows   (Transform)
    commits -> file order, one at a time, here                         (Load)

Where the work runs is the `Runner`'s business (tasks/ingest_dask.py: Prefect tasks on a Dask cluster through
prefect-dask's DaskTaskRunner). The loop only trusts what it can check, because a Dask-backed task state can
lie both ways: a task whose worker died is left Running and its future raises instead (prefect#21638), and a
finished task can be run again when the worker holding its result dies (prefect#15442). So the runner turns
each future into an `Outcome` from the future itself (`lost`: the infrastructure lost the work, run it again;
`error`: the task raised, the file fails with its name), the committer checks the staged files against the
verdict before committing (loopline.data.staged_commit), every gate attempt stages into a folder of its own,
and every commit is idempotent. Results are taken as soon as they exist, so nothing the loop still needs sits
on a worker that may die.

A file that fails (its task raised, or was lost `attempts` times) is reported with its name; the others land,
and the failed ones can simply be ingested again (everything that landed is a no-op then).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np

from loopline.config import LifecycleConfig
from loopline.data import ledger
from loopline.data.contracts import Contract
from loopline.data.ingest import BatchResult
from loopline.data.parallel import FileScan, StagedBatch, remove_stage
from loopline.data.parallel_plan import GatePlan
from loopline.data.staged_commit import StagedOutputError, duplicate_result
from loopline.storage import delta
from loopline.storage.lake import Lake

ATTEMPTS = 3  # runs of one file's task the infrastructure may lose (a worker killed, a result gone)
SCAN_FILES = 8  # files scanned by one task


@dataclass
class Outcome:
    value: Any = None
    error: str | None = None  # the task raised: the file fails, named
    lost: str | None = None  # the infrastructure lost the task (its worker died, no final state): rerun it


class Runner(Protocol):
    def scan(self, uris: list[str]) -> Any: ...
    def gate(self, uri: str, **kwargs: Any) -> Any: ...
    def wait(self, handles: list[Any]) -> list[Any]:  # at least one of `handles` done; returns the done ones
        ...
    def outcome(self, handle: Any) -> Outcome: ...
    def cancel(self, handles: Iterable[Any]) -> None: ...


@dataclass
class FileFailure:
    uri: str
    error: str


class _Gates:
    """The gate submissions: which file each handle is, how often each file was lost, its fixed ingest time."""

    def __init__(self, runner: Runner, files: list[str], scans: list[FileScan], plan: GatePlan, root: str):
        self.runner, self.files, self.scans, self.plan, self.root = runner, files, scans, plan, root
        self.pending: dict[Any, tuple[int, np.ndarray]] = {}
        self.submitted: set[int] = set()
        self.lost = [0] * len(files)
        self.at: dict[int, datetime] = {}

    def submit(self, k: int, run_ids: np.ndarray, snapshot: int | None) -> None:
        self.submitted.add(k)
        self.at.setdefault(k, datetime.now(UTC))  # a re-run stages the very same rows
        handle = self.runner.gate(
            self.files[k],
            batch_id=self.scans[k].batch_id,
            stage_root=self.root,
            snapshot_version=snapshot,
            run_ids=run_ids,
            ingested_at=self.at[k],
            want_clean_ids=self.plan.dependents[k] > 0,
        )
        self.pending[handle] = (k, run_ids)


def ingest_in_parallel(
    files: list[str],
    contract: Contract,
    lake: Lake,
    cfg: LifecycleConfig,
    runner: Runner,
    *,
    stage_root: str,
    commit: Callable[[StagedBatch], tuple[BatchResult, np.ndarray | None]],
    report: Callable[[BatchResult, bool], None] = lambda result, failed: None,
    idle: Callable[[], None] = lambda: None,
) -> tuple[list[BatchResult], list[FileFailure]]:
    """Ingest `files` (one batch each) with validation on `runner` and `commit` (loopline.data.staged_commit.
    commit_staged, inside the dataset's lake slot where Prefect runs it) here, in file order; `report(result,
    failed)` after each; `idle()` before each wait for a worker (the commits are done in bursts between
    them: where Prefect runs this, the dataset's lake slot is held for a burst, not taken per batch). Returns
    every file's result (failed files as rejected results naming the error) and the failures."""
    snapshot = delta.table_version(lake, lake.table_uri("clean", contract.dataset))
    failures: dict[int, str] = {}
    scans = _scan_all(runner, files, failures)
    done = _accepted_batches(lake, contract.dataset)
    plan = GatePlan(
        [s.ids for s in scans],
        [k in failures or bool(s.unreadable) or s.batch_id in done for k, s in enumerate(scans)],
    )
    gates = _Gates(runner, files, scans, plan, stage_root)
    staged: dict[int, StagedBatch] = {}
    results: list[BatchResult] = []
    try:
        while len(results) < len(files):
            for k in range(len(files)):
                if k not in gates.submitted and k not in failures and plan.ready(k):
                    gates.submit(k, plan.run_ids(k), snapshot)
            k = len(results)
            if plan.skip[k] or k in failures:
                results.append(_skipped(lake, contract, files[k], scans[k], failures.get(k)))
                plan.committed(k, plan.run_ids(k, "committed"), None)
            elif k in staged:
                result = _commit_next(k, staged.pop(k), plan, gates, snapshot, commit, failures, lake)
                if result is None:
                    continue  # judged again (below, with the ids earlier files really committed)
                results.append(result)
            else:
                idle()  # nothing to commit until a worker delivers: what the committer holds, it may let go
                _collect(gates, runner.wait(list(gates.pending)), staged, failures, snapshot)
                continue
            report(results[-1], k in failures)
    finally:
        runner.cancel(list(gates.pending))
        remove_stage(lake, stage_root)
    return results, [FileFailure(files[k], failures[k]) for k in sorted(failures)]


def _commit_next(
    k: int,
    batch: StagedBatch,
    plan: GatePlan,
    gates: _Gates,
    snapshot: int | None,
    commit: Callable,
    failures: dict[int, str],
    lake: Lake,
) -> BatchResult | None:
    """Commit file k if it was judged against the ids earlier files really committed; else judge it again."""
    truth = plan.run_ids(k, "committed")
    if not np.array_equal(truth, batch.run_ids):
        remove_stage(lake, batch.stage)
        gates.submit(k, truth, snapshot)
        return None
    try:
        result, ids = commit(batch)
    except StagedOutputError as exc:  # a worker's output is not what it said: run that gate again
        remove_stage(lake, batch.stage)
        if _lost_again(gates, k, str(exc), failures):
            return None
        gates.submit(k, truth, snapshot)
        return None
    plan.committed(k, truth, ids)
    remove_stage(lake, batch.stage)
    return result


def _collect(
    gates: _Gates, done: list[Any], staged: dict[int, StagedBatch], failures: dict[int, str], snapshot
) -> None:
    for handle in done:
        k, run_ids = gates.pending.pop(handle)
        outcome = gates.runner.outcome(handle)
        if outcome.value is not None:
            batch: StagedBatch = outcome.value
            staged[k] = batch
            clean = batch.clean_ids if batch.accepted and batch.column_error is None else None
            gates.plan.judged(k, run_ids, clean)
        elif outcome.error is not None:
            failures[k] = outcome.error
            gates.plan.judged(k, run_ids, None)
        elif not _lost_again(gates, k, outcome.lost or "no result", failures):
            gates.submit(k, run_ids, snapshot)


def _lost_again(gates: _Gates, k: int, why: str, failures: dict[int, str]) -> bool:
    """Count one more loss of file k's gate; True (and k failed) once it was lost ATTEMPTS times."""
    gates.lost[k] += 1
    if gates.lost[k] < ATTEMPTS:
        return False
    failures[k] = f"lost {gates.lost[k]} times on the cluster (last: {why})"
    gates.plan.judged(k, gates.plan.run_ids(k), None)
    return True


def _scan_all(runner: Runner, files: list[str], failures: dict[int, str]) -> list[FileScan]:
    """Every file's scan, SCAN_FILES files to a task (a scan is cheap; a task run is not)."""
    scans: list[FileScan | None] = [None] * len(files)
    chunks = [list(range(i, min(i + SCAN_FILES, len(files)))) for i in range(0, len(files), SCAN_FILES)]
    lost = [0] * len(chunks)
    pending = {runner.scan([files[k] for k in chunk]): c for c, chunk in enumerate(chunks)}
    try:
        while pending:
            for handle in runner.wait(list(pending)):
                c = pending.pop(handle)
                outcome = runner.outcome(handle)
                if outcome.value is not None:
                    for k, scan in zip(chunks[c], outcome.value, strict=True):
                        scans[k] = scan
                        if scan.error is not None:
                            failures[k] = scan.error
                elif outcome.error is not None or lost[c] + 1 >= ATTEMPTS:
                    why = outcome.error or f"lost {lost[c] + 1} times on the cluster (last: {outcome.lost})"
                    for k in chunks[c]:
                        failures[k] = f"scan failed: {why}"
                else:
                    lost[c] += 1
                    pending[runner.scan([files[k] for k in chunks[c]])] = c
    finally:
        runner.cancel(list(pending))
    return [s if s is not None else FileScan(uri=f) for s, f in zip(scans, files, strict=True)]


def _accepted_batches(lake: Lake, dataset: str) -> set[str]:
    table = delta.open_table(lake, ledger.ledger_uri(lake, dataset))
    if table is None:
        return set()
    import pyarrow.compute as pc

    rows = delta.dataset(table).to_table(columns=["batch_id"], filter=pc.field("status") == "accepted")
    return set(rows["batch_id"].to_pylist())


def _skipped(lake: Lake, contract: Contract, uri: str, scan: FileScan, failure: str | None) -> BatchResult:
    """The result of a file with no gate: failed, unreadable (a rejection, as locally in a folder), or a batch
    the ledger holds already (a no-op)."""
    if failure is not None:
        return BatchResult(
            dataset=contract.dataset,
            batch_id=scan.batch_id,
            source=uri,
            accepted=False,
            reason=f"{uri}: failed on the cluster, nothing of it was committed: {failure}",
        )
    if scan.unreadable is not None:
        return BatchResult(
            dataset=contract.dataset, batch_id="", source=uri, accepted=False, reason=scan.unreadable
        )
    duplicate = duplicate_result(lake, contract, uri, scan.batch_id)
    assert duplicate is not None, "the ledger's accepted batches stay accepted"
    return duplicate
