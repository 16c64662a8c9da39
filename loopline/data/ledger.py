"""The batch ledger batches/D: one row per ingest attempt that got as far as a verdict.

An `accepted` row is what makes a batch "done" (ingest writes it last, after raw, quarantine and clean); it
is written once, under the batch's Delta app transaction. `rejected` rows may repeat: a changed threshold
can accept the same file later.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import pyarrow as pa

from loopline.data.contracts import Contract
from loopline.data.schemas import ledger_schema
from loopline.storage import delta
from loopline.storage.lake import Lake

if TYPE_CHECKING:
    from loopline.data.ingest import BatchResult


def ledger_uri(lake: Lake, dataset: str) -> str:
    return lake.uri("batches", dataset)


def find_entry(lake: Lake, uri: str, batch_id: str) -> dict | None:
    """The batch's ledger row: its accepted one if any, else its last rejection; None when never recorded."""
    table = delta.open_table(lake, uri)
    if table is None:
        return None
    import pyarrow.compute as pc

    rows = delta.dataset(table).to_table(filter=pc.field("batch_id") == batch_id).to_pylist()
    accepted = [r for r in rows if r["status"] == "accepted"]
    return (accepted or rows or [None])[-1]


def record(lake: Lake, uri: str, result: BatchResult, contract: Contract, status: str, at: datetime) -> None:
    row = pa.Table.from_pylist(
        [
            {
                "batch_id": result.batch_id,
                "source": result.source,
                "status": status,
                "rows_in": result.rows_in,
                "rows_clean": result.rows_clean,
                "rows_quarantined": result.rows_quarantined,
                "contract_hash": contract.hash,
                "ingested_at": at,
            }
        ],
        schema=ledger_schema(),
    )
    # rejected attempts may repeat (a changed threshold can accept the same file later); acceptance happens once
    app_id = (
        f"loopline-ingest-{result.batch_id}"
        if status == "accepted"
        else f"loopline-reject-{result.batch_id}-{at.timestamp()}"
    )
    delta.append_once(lake, uri, row, app_id=app_id)


def fill_versions(result: BatchResult, lake: Lake, dataset: str) -> None:
    """Set the result's raw/clean/quarantine Delta versions to the tables' current ones."""
    result.raw_version = delta.table_version(lake, lake.table_uri("raw", dataset))
    result.clean_version = delta.table_version(lake, lake.table_uri("clean", dataset))
    result.quarantine_version = delta.table_version(lake, lake.table_uri("quarantine", dataset))
