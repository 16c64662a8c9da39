"""The committer of a parallel ingest: one staged batch (loopline.data.parallel) into raw/D, clean/D,
quarantine/D and the ledger through the same commit sequence as a local ingest (loopline.data.batch_commit:
the same commits, app transactions, order and kill points), so everything said in loopline.data.ingest about
exactly-once, concurrent ingests and reruns after a kill holds here too. The only difference: raw/D's rows come
from the staged raw files instead of streaming from the gate, and the verdict from the worker.

Before committing, `check_staged` holds the worker's output to what it claims (every staged file is there and
holds the rows it said): the committer trusts files it can count, not a task state (prefect#21638).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from loopline.config import LifecycleConfig
from loopline.data import batch_commit
from loopline.data.batch_commit import Judged, app_id_for, commit_batch
from loopline.data.contracts import Contract
from loopline.data.encoding import raw_properties
from loopline.data.ingest import BatchResult
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
    return batch_commit.duplicate_result(lake, contract, batch_id, _source(uri))


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
    batch_id = staged.batch_id
    duplicate = duplicate_result(lake, contract, staged.uri, batch_id)
    if duplicate is not None:
        return duplicate, None
    result = BatchResult(dataset=contract.dataset, batch_id=batch_id, source=staged.source)
    raw_uri = lake.table_uri("raw", contract.dataset)
    schema = raw_schema(contract)

    def write_raw(committed: bool) -> None:
        if committed:
            return
        delta.append_once(
            lake,
            raw_uri,
            lambda: staged_reader(stage / "raw", schema, on_batch=lambda: kill_point("ingest.raw_writing")),
            app_id=app_id_for(batch_id),
            metadata={"batch_id": batch_id, "source": staged.source},
            writer_properties=raw_properties(contract, schema),
        )

    def judge() -> Judged:
        return Judged.of(staged, staged.column_error)

    snapshot = (
        delta.open_table(lake, lake.table_uri("clean", contract.dataset), staged.snapshot_version)
        if staged.snapshot_version is not None
        else None
    )
    # the ids the gate read: once an earlier file of the run committed, clean/D is past this snapshot and the
    # commit re-checks the batch's ids (a few lookups), as after a concurrent ingest
    checked = TableIds(snapshot, contract.id, exclude_batch=batch_id)
    commit = commit_batch(
        lake,
        contract,
        result,
        stage=stage,
        at=staged.ingested_at,
        checked=checked,
        write_raw=write_raw,
        judge=judge,
    )
    if commit is None:
        return result, None
    return result, _committed_ids(stage, contract, commit.moved)


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
