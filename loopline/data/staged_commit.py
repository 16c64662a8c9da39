"""The committer of a parallel ingest: one staged batch (loopline.data.parallel) into raw/D, clean/D,
quarantine/D and the ledger, with the same commits, app transactions, order and kill points as a local ingest
(loopline.data.ingest `_ingest_batch`, from its raw commit on), so everything said there about exactly-once,
concurrent ingests and reruns after a kill holds here too. The only difference: raw/D's rows come from the
staged raw files instead of streaming from the gate.

Before committing, `check_staged` holds the worker's output to what it claims (every staged file is there and
holds the rows it said): the committer trusts files it can count, not a task state (prefect#21638).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from loopline.config import LifecycleConfig
from loopline.data import ledger
from loopline.data.clean_commit import commit_clean, quarantine_rows
from loopline.data.contracts import Contract
from loopline.data.ingest import BatchResult, _count_moved
from loopline.data.parallel import KINDS, StagedBatch, localize, plain_ids
from loopline.data.raw_writer import staged_reader
from loopline.data.schemas import raw_schema
from loopline.data.validation.ids import TableIds
from loopline.faults import kill_point
from loopline.storage import delta, sources
from loopline.storage.lake import Lake


class StagedOutputError(RuntimeError):
    """A worker's staged files are not what its result says (missing, or other row counts)."""


def check_staged(staged: StagedBatch, stage: Path) -> None:
    """Raise StagedOutputError unless every kind's staged files are there with the rows the worker counted,
    and those agree with the verdict (raw = every row; clean + quarantine = every row once)."""
    found = {
        kind: sum(pq.ParquetFile(f).metadata.num_rows for f in sorted((stage / kind).glob("*.parquet")))
        for kind in KINDS
    }
    expected = dict(staged.staged_rows)
    problems = [
        f"{k}: {found[k]} rows staged, {expected.get(k)} reported"
        for k in KINDS
        if found[k] != expected.get(k)
    ]
    if found["raw"] != staged.rows_in:
        problems.append(f"raw: {found['raw']} rows staged for {staged.rows_in} rows in")
    if staged.column_error is None and (found["clean"], found["quarantine"]) != (
        staged.rows_clean,
        staged.rows_quarantined,
    ):
        problems.append(
            f"clean/quarantine: {found['clean']}/{found['quarantine']} staged, verdict "
            f"{staged.rows_clean}/{staged.rows_quarantined}"
        )
    if problems:
        raise StagedOutputError(
            f"{staged.uri}: the staged batch {staged.stage} is incomplete: " + "; ".join(problems)
        )


def duplicate_result(lake: Lake, contract: Contract, uri: str, batch_id: str) -> BatchResult | None:
    """The result of a batch the ledger holds as accepted (a re-ingest: nothing to do), else None."""
    previous = ledger.find_entry(lake, ledger.ledger_uri(lake, contract.dataset), batch_id)
    if previous is None or previous["status"] != "accepted":
        return None
    result = BatchResult(dataset=contract.dataset, batch_id=batch_id, source=_source(uri))
    result.duplicate_batch = True
    result.rows_in = int(previous["rows_in"])
    result.rows_clean = int(previous["rows_clean"])
    result.rows_quarantined = int(previous["rows_quarantined"])
    ledger.fill_versions(result, lake, contract.dataset)
    return result


def _source(uri: str) -> str:
    return uri if "://" in uri else str(Path(uri).resolve())


def commit_staged(
    lake: Lake, contract: Contract, cfg: LifecycleConfig, staged: StagedBatch
) -> tuple[BatchResult, np.ndarray | None]:
    """Commit one staged batch (a rerun of a half-done commit finishes it). Returns the result and the ids the
    batch put in clean/D (None when it put none: rejected, or a duplicate)."""
    workdir = sources.scratch_dir()
    try:
        stage = localize(lake, staged.stage, workdir)
        check_staged(staged, stage)
        return delta.retry_conflicts(
            lambda: _commit(lake, contract, staged, stage),
            f"commit of {staged.uri} into dataset {contract.dataset}",
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _commit(
    lake: Lake, contract: Contract, staged: StagedBatch, stage: Path
) -> tuple[BatchResult, np.ndarray | None]:
    batch_id, at = staged.batch_id, staged.ingested_at
    duplicate = duplicate_result(lake, contract, staged.uri, batch_id)
    if duplicate is not None:
        return duplicate, None
    result = BatchResult(dataset=contract.dataset, batch_id=batch_id, source=staged.source)
    ledger_uri = ledger.ledger_uri(lake, contract.dataset)
    app_id = f"loopline-ingest-{batch_id}"
    meta = {"batch_id": batch_id, "source": staged.source}

    raw_uri = lake.table_uri("raw", contract.dataset)
    kill_point("ingest.before_raw")
    if not delta.is_committed(delta.open_table(lake, raw_uri), app_id):
        delta.append_once(
            lake,
            raw_uri,
            lambda: staged_reader(
                stage / "raw", raw_schema(contract), on_batch=lambda: kill_point("ingest.raw_writing")
            ),
            app_id=app_id,
            metadata=meta,
        )
    kill_point("ingest.after_raw")

    result.rows_in = staged.rows_in
    if staged.column_error is not None:
        return _rejected(lake, contract, result, staged.column_error, ledger_uri, at), None

    result.rows_clean, result.rows_quarantined = staged.rows_clean, staged.rows_quarantined
    result.per_expectation = [dict(e) for e in staged.per_expectation]
    result.data_docs_path = staged.data_docs_path
    clean_uri = lake.table_uri("clean", contract.dataset)
    snapshot = (
        delta.open_table(lake, clean_uri, staged.snapshot_version)
        if staged.snapshot_version is not None
        else None
    )
    # the ids the gate read: once an earlier file of the run committed, clean/D is past this snapshot and the
    # commit re-checks the batch's ids (a few lookups), as after a concurrent ingest
    checked = TableIds(snapshot, contract.id, exclude_batch=batch_id)
    if not staged.accepted and not delta.is_committed(checked.table, app_id):
        return _rejected(lake, contract, result, staged.reason, ledger_uri, at), None

    commit = commit_clean(
        lake,
        contract,
        stage,
        batch_id=batch_id,
        app_id=app_id,
        metadata=meta,
        checked=checked,
        rows_in=result.rows_in,
        rows_quarantined=result.rows_quarantined,
        max_fraction=staged.quarantine_max_fraction,
    )
    _count_moved(result, contract, len(commit.moved))
    if commit.rejected is not None:
        return _rejected(lake, contract, result, commit.rejected, ledger_uri, at), None
    delta.append_once(
        lake,
        lake.table_uri("quarantine", contract.dataset),
        quarantine_rows(lake, contract, stage, batch_id, commit.moved),
        app_id=app_id,
        metadata=meta,
    )
    kill_point("ingest.after_quarantine")
    ledger.record(lake, ledger_uri, result, contract, "accepted", at)
    kill_point("ingest.after_ledger")
    ledger.fill_versions(result, lake, contract.dataset)
    return result, _committed_ids(stage, contract, commit.moved)


def _rejected(
    lake: Lake, contract: Contract, result: BatchResult, reason: str | None, ledger_uri: str, at
) -> BatchResult:
    result.accepted, result.reason = False, reason
    ledger.record(lake, ledger_uri, result, contract, "rejected", at)
    ledger.fill_versions(result, lake, contract.dataset)
    return result


def _committed_ids(stage: Path, contract: Contract, moved: dict) -> np.ndarray:
    """The ids the clean commit put in clean/D: the staged clean rows less those it moved to quarantine."""
    files = sorted((stage / "clean").glob("*.parquet"))
    if not files:
        return np.empty(0)
    parts = [pq.read_table(f, columns=[contract.id, "_row"]) for f in files]
    ids = np.concatenate([plain_ids(p[contract.id].to_pandas(), contract) for p in parts])
    if moved:
        rows = np.concatenate([p["_row"].to_numpy() for p in parts])
        ids = ids[~np.isin(rows, np.fromiter(moved, dtype=np.int64))]
    return np.unique(ids)
