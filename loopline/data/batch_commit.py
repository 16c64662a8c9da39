"""The commit sequence of one batch: raw/D, then clean/D, then quarantine/D, then the ledger row, each ONE
Delta commit under the batch's app transaction (`loopline-ingest-<batch_id>`), with the kill points
ingest.before_raw, .after_raw, .after_quarantine and .after_ledger between them (the clean commit's own are in
clean_commit).

One function serves both ingest paths, so exactly-once, the order and every kill point are the same whichever
ran the gate: a local ingest (loopline.data.ingest), whose raw commit streams the file through the gate while
it writes, and the committer of a parallel ingest (loopline.data.staged_commit), whose raw rows and verdict a
worker staged beforehand. They differ only in `write_raw` (how raw/D gets the batch) and `judge` (where the
verdict comes from, asked once raw/D holds the batch). loopline.data.ingest explains why this order makes
every rerun after a kill exact.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loopline.data import ledger
from loopline.data.clean_commit import CleanCommit, commit_clean, quarantine_rows
from loopline.data.contracts import Contract
from loopline.data.encoding import raw_properties
from loopline.data.schemas import quarantine_schema
from loopline.data.validation.ids import TableIds
from loopline.faults import kill_point
from loopline.storage import delta
from loopline.storage.delta_files import PreWrite
from loopline.storage.lake import Lake

if TYPE_CHECKING:
    from loopline.data.ingest import BatchResult


def app_id_for(batch_id: str) -> str:
    """The Delta app transaction every commit of the batch carries."""
    return f"loopline-ingest-{batch_id}"


@dataclass
class Judged:
    """The gate's verdict on a batch, as the commit sequence needs it."""

    rows_in: int
    rows_clean: int = 0
    rows_quarantined: int = 0
    accepted: bool = True
    reason: str | None = None
    per_expectation: list[dict] = field(default_factory=list)
    data_docs_path: str | None = None
    quarantine_max_fraction: float = 0.0
    column_error: str | None = None  # the file's columns broke the contract: raw/D only, then rejected

    @classmethod
    def of(cls, verdict: Any, column_error: str | None = None) -> Judged:
        """From the gate's verdict, or a staged batch carrying the same fields."""
        return cls(
            rows_in=verdict.rows_in,
            rows_clean=verdict.rows_clean,
            rows_quarantined=verdict.rows_quarantined,
            accepted=verdict.accepted,
            reason=verdict.reason,
            per_expectation=verdict.per_expectation,
            data_docs_path=verdict.data_docs_path,
            quarantine_max_fraction=verdict.quarantine_max_fraction,
            column_error=column_error,
        )


def commit_batch(
    lake: Lake,
    contract: Contract,
    result: BatchResult,
    *,
    stage: Path,
    at: datetime,
    checked: TableIds,
    write_raw: Callable[[bool], None],
    judge: Callable[[], Judged],
    prewrite: Callable[[], PreWrite | None] | None = None,
) -> CleanCommit | None:
    """Commit the batch (a rerun of a half-done one finishes it) and fill `result`. Returns the clean commit,
    or None when the batch was rejected (recorded in the ledger as such).

    `write_raw(committed)`: puts the batch in raw/D, or, when `committed` (an earlier attempt did), only does
    what must happen anyway (a local ingest still validates the file). `judge()`: the verdict, asked after
    the raw commit. `checked`: the clean/D snapshot whose ids the gate read. `prewrite()`: the staged clean rows
    being written as clean/D files meanwhile (`clean_commit.prewrite_clean`; started by `judge()`), or None."""
    batch_id = result.batch_id
    ledger_uri = ledger.ledger_uri(lake, contract.dataset)
    app_id = app_id_for(batch_id)
    meta = {"batch_id": batch_id, "source": result.source}

    kill_point("ingest.before_raw")
    write_raw(delta.is_committed(delta.open_table(lake, lake.table_uri("raw", contract.dataset)), app_id))
    kill_point("ingest.after_raw")

    verdict = judge()
    result.rows_in = verdict.rows_in
    if verdict.column_error is not None:
        return _rejected(lake, contract, result, verdict.column_error, ledger_uri, at)
    result.rows_clean, result.rows_quarantined = verdict.rows_clean, verdict.rows_quarantined
    result.per_expectation = [dict(e) for e in verdict.per_expectation]
    result.data_docs_path = verdict.data_docs_path
    if result.rows_in != result.rows_clean + result.rows_quarantined:  # the gate's invariant, checked again
        raise AssertionError(f"batch {batch_id}: rows_in != rows_clean + rows_quarantined")
    # a batch whose clean commit happened was judged then: a rerun finishes it (see loopline.data.ingest)
    if not verdict.accepted and not delta.is_committed(checked.table, app_id):
        return _rejected(lake, contract, result, verdict.reason, ledger_uri, at)

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
        max_fraction=verdict.quarantine_max_fraction,
        prewrite=prewrite() if prewrite is not None else None,
    )
    count_moved(result, contract, len(commit.moved))
    if commit.rejected is not None:
        return _rejected(lake, contract, result, commit.rejected, ledger_uri, at)
    delta.append_once(
        lake,
        lake.table_uri("quarantine", contract.dataset),
        quarantine_rows(lake, contract, stage, batch_id, commit.moved),
        app_id=app_id,
        metadata=meta,
        writer_properties=raw_properties(contract, quarantine_schema(contract)),
    )
    kill_point("ingest.after_quarantine")
    ledger.record(lake, ledger_uri, result, contract, "accepted", at)
    kill_point("ingest.after_ledger")
    ledger.fill_versions(result, lake, contract.dataset)
    return commit


def duplicate_result(lake: Lake, contract: Contract, batch_id: str, source: str) -> BatchResult | None:
    """The result of a batch the ledger holds as accepted (a re-ingest: nothing to do), else None."""
    from loopline.data.ingest import BatchResult

    previous = ledger.find_entry(lake, ledger.ledger_uri(lake, contract.dataset), batch_id)
    if previous is None or previous["status"] != "accepted":
        return None
    result = BatchResult(dataset=contract.dataset, batch_id=batch_id, source=source, duplicate_batch=True)
    result.rows_in = int(previous["rows_in"])
    result.rows_clean = int(previous["rows_clean"])
    result.rows_quarantined = int(previous["rows_quarantined"])
    ledger.fill_versions(result, lake, contract.dataset)
    return result


def count_moved(result: BatchResult, contract: Contract, moved: int) -> None:
    """Rows the clean commit moved to quarantine (another batch committed their id first) count as `new_id`."""
    if not moved:
        return
    result.rows_clean -= moved
    result.rows_quarantined += moved
    for entry in result.per_expectation:
        if entry.get("column") == contract.id and entry.get("check") == "new_id":
            entry["unexpected_count"] = int(entry.get("unexpected_count") or 0) + moved


def _rejected(
    lake: Lake, contract: Contract, result: BatchResult, reason: str | None, ledger_uri: str, at: datetime
) -> None:
    result.accepted, result.reason = False, reason
    ledger.record(lake, ledger_uri, result, contract, "rejected", at)
    ledger.fill_versions(result, lake, contract.dataset)
