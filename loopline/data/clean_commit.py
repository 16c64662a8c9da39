"""The clean/D commit of one batch: ids stay unique in clean/D whatever ingests run at once (first arrival
wins), a batch enters clean/D once, and every row the commit leaves out goes to quarantine/D.

The gate checks a batch's ids against one snapshot of clean/D (`TableIds`: only the batch's own ids are
read). Another ingest may commit the same ids after that snapshot, so the commit re-checks: every clean commit
carries the table's writer app transaction (`WRITER`, version previous + 1) besides the batch's own, so two
concurrent clean commits conflict (loopline.storage.delta); the loser re-reads clean/D, moves the rows whose id
another batch now holds to quarantine (`moved`, their reason names that batch), judges the batch again against
`quarantine_max_fraction`, and retries from the new snapshot. When the snapshot is the one the gate read, there
is nothing to re-check (the common, single-writer case costs no extra read).

The same re-check finishes a batch whose clean commit already happened (an earlier attempt killed after it, or
a concurrent ingest of the same file that won): the rows of the staged batch that another batch holds are the
ones that commit left out, so quarantine/D gets exactly them. Ingest commits raw, then clean, then quarantine,
then the ledger row; see loopline.data.ingest for why that order makes every rerun exact.

Also here: an allowed column type change rewrites clean/D in the batch's commit (`retyped_columns`,
`check_retype`, `retyped_reader`), from the same snapshot the commit is checked against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from loopline.data.contracts import Contract
from loopline.data.encoding import clean_parquet_options, clean_properties
from loopline.data.raw_writer import staged_ids, staged_reader
from loopline.data.schemas import clean_schema, quarantine_schema, raw_schema
from loopline.data.validation.ids import TableIds
from loopline.errors import ContractError
from loopline.faults import kill_point
from loopline.storage import delta, delta_files
from loopline.storage.lake import Lake

WRITER = "loopline-clean-writer"  # the app transaction every clean/D commit carries (version previous + 1)


@dataclass
class CleanCommit:
    version: int | None
    written: bool
    moved: dict[int, tuple[Any, str]] = field(default_factory=dict)  # _row -> (id, the batch that holds it)
    rejected: str | None = None  # the batch failed quarantine_max_fraction once the moved rows counted


def commit_clean(
    lake: Lake,
    contract: Contract,
    stage: Path,
    *,
    batch_id: str,
    app_id: str,
    metadata: dict,
    checked: TableIds,
    rows_in: int,
    rows_quarantined: int,
    max_fraction: float,
    prewrite: delta_files.PreWrite | None = None,
) -> CleanCommit:
    """Commit the staged clean rows of the batch, less those whose id another batch holds by now. `checked`:
    the ids the gate read (its snapshot's version says whether there is anything to re-check).
    `prewrite`: the staged rows already being written into clean/D's folder (`prewrite_clean`): committed as
    they are when the commit is a plain append of every staged row, else left for the caller to discard."""
    uri = lake.table_uri("clean", contract.dataset)

    def attempt() -> CleanCommit:
        table = delta.open_table(lake, uri)
        ids = TableIds(table, contract.id, exclude_batch=batch_id)
        moved = {} if ids.version == checked.version else _taken(stage, contract, ids)
        if delta.is_committed(table, app_id):  # an earlier attempt, or a concurrent twin, committed it
            return CleanCommit(table.version(), False, moved)
        bad = rows_quarantined + len(moved)
        if moved and bad > max_fraction * rows_in:
            return CleanCommit(
                None, False, moved, rejected=_rejection(contract, moved, bad, rows_in, max_fraction)
            )
        retyped = retyped_columns(lake, contract, table)
        if (
            prewrite is not None
            and not moved
            and not retyped
            and delta_files.can_write(uri, table, clean_schema(contract), "append")
        ):
            data = prewrite.written()
        else:
            rows = staged_reader(
                stage / "clean",
                clean_schema(contract),
                drop_rows=np.array(sorted(moved), dtype=np.int64),
                on_batch=lambda: kill_point("ingest.clean_writing"),
            )
            data = retyped_reader(table, retyped, rows) if retyped else rows
        kill_point("ingest.before_clean")
        version, written = delta.append_once(
            lake,
            uri,
            data,
            app_id=app_id,
            metadata={**metadata, "retyped": sorted(retyped)} if retyped else metadata,
            mode="overwrite" if retyped else "append",
            table=table,
            writer=WRITER,
            writer_properties=clean_properties(contract, clean_schema(contract)),
            parquet_options=clean_parquet_options(contract, clean_schema(contract)),
        )
        kill_point("ingest.after_clean")
        return CleanCommit(version, written, moved)

    return delta.retry_conflicts(attempt, f"the clean/{contract.dataset} commit of batch {batch_id}")


def prewrite_clean(lake: Lake, contract: Contract, stage: Path) -> delta_files.PreWrite | None:
    """Start writing the staged clean rows as clean/D files (a local table only), for `commit_clean`.

    The ingest starts it once the stream has ended, so that the files are written while the GX run confirms
    the verdict (1M demo rows: the clean commit after GX 1.0 -> 0.1 s). Files of a commit that is not made
    are removed by the caller (`PreWrite.discard`); a kill leaves orphans no snapshot references, as any
    interrupted Delta write does (vacuum removes them)."""
    folder = delta_files.local_path(lake.table_uri("clean", contract.dataset))
    if folder is None:
        return None
    schema = clean_schema(contract)
    return delta_files.PreWrite(
        folder,
        schema,
        lambda: staged_reader(stage / "clean", schema, on_batch=lambda: kill_point("ingest.clean_writing")),
        clean_parquet_options(contract, schema),
    )


def _taken(stage: Path, contract: Contract, ids: TableIds) -> dict[int, tuple[Any, str]]:
    """Staged clean rows whose id another batch holds in `ids`' snapshot: _row -> (id, holder)."""
    out: dict[int, tuple[Any, str]] = {}
    for part in staged_ids(stage / "clean", contract.id):
        held = ids.holders(part[contract.id])
        if not held:
            continue
        for value, row in zip(part[contract.id].to_pylist(), part["_row"].to_pylist(), strict=True):
            if value in held:
                out[row] = (value, held[value])
    return out


def _rejection(contract: Contract, moved: dict, bad: int, rows_in: int, max_fraction: float) -> str:
    return (
        f"{bad} of {rows_in} rows ({bad / rows_in:.2%}) broke the contract of {contract.dataset}, more than "
        f"quarantine_max_fraction {max_fraction:g}, once {len(moved)} rows whose {contract.id} a concurrent "
        f"ingest committed first counted as duplicates"
    )


def moved_reason(contract: Contract, value: Any, holder: str) -> str:
    """The quarantine reason of a row whose id another batch committed first: it names the duplicate."""
    return (
        f"{contract.id}: id already ingested (in clean/{contract.dataset}): {contract.id} {value} was committed "
        f"first by batch {holder}"
    )


def quarantine_rows(lake: Lake, contract: Contract, stage: Path, batch_id: str, moved: dict):
    """A callable giving the batch's quarantine/D rows: the gate's (staged) and the moved ones, read back from
    raw/D as received (raw/D holds the batch by now), with their reasons. Callable: a retry reads it again."""
    schema = quarantine_schema(contract)

    def reader() -> pa.RecordBatchReader:
        staged = staged_reader(stage / "quarantine", schema)
        if not moved:
            return staged
        raw = delta.open_table(lake, lake.table_uri("raw", contract.dataset))
        assert raw is not None, "raw/D is committed before clean/D"
        rows = pa.array(sorted(moved), pa.int64())
        flt = (pc.field("_batch_id") == batch_id) & pc.field("_row").isin(rows)
        found = delta.dataset(raw).to_table(columns=raw_schema(contract).names, filter=flt)
        found = found.sort_by("_row")
        reasons = [moved_reason(contract, *moved[r]) for r in found["_row"].to_pylist()]
        extra = found.append_column("_reasons", pa.array(reasons, pa.string())).cast(schema)
        if extra.num_rows != len(moved):
            raise AssertionError(f"batch {batch_id}: {len(moved)} moved rows, {extra.num_rows} found in raw")

        def batches():
            yield from staged
            yield from extra.to_batches()

        return pa.RecordBatchReader.from_batches(schema, batches())

    return reader


def retyped_columns(
    lake: Lake, contract: Contract, table: DeltaTable | None = None
) -> dict[str, pa.DataType]:
    """clean/D's columns whose stored type is not the contract's (after an allowed type change), in the
    snapshot `table` (default: the latest)."""
    table = table if table is not None else delta.open_table(lake, lake.table_uri("clean", contract.dataset))
    if table is None:
        return {}
    stored = delta.dataset(table).schema
    return {
        f.name: f.type
        for f in clean_schema(contract)
        if f.name in stored.names and stored.field(f.name).type != f.type
    }


def check_retype(lake: Lake, contract: Contract) -> None:
    """Before anything commits: every value clean/D holds in a retyped column must take the new type
    (int -> float always does; 2.5 -> int does not). Raises ContractError naming the column."""
    retyped = retyped_columns(lake, contract)
    if not retyped:
        return
    stored = delta.read_column(lake, lake.table_uri("clean", contract.dataset), sorted(retyped))
    assert stored is not None
    for name, to in retyped.items():
        try:
            stored[name].cast(to)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ContractError(
                f"column {name!r} becomes {contract.columns[name].type}, but clean/{contract.dataset} holds "
                f"values that are not ({exc}); keep the old type or clean those rows first",
                file=contract.path,
            ) from exc


def retyped_reader(
    table: DeltaTable, retyped: dict[str, pa.DataType], new_rows: pa.RecordBatchReader
) -> pa.RecordBatchReader:
    """The snapshot's rows with the retyped columns cast, then the batch's rows: what the overwrite commits.
    Columns the contract no longer names stay (null in new rows), as an append would keep them."""
    old = delta.dataset(table)
    fields = [pa.field(f.name, retyped.get(f.name, f.type)) for f in old.schema]
    fields += [f for f in new_rows.schema if f.name not in old.schema.names]
    schema = pa.schema(fields)

    def conform(rb: pa.RecordBatch) -> pa.RecordBatch:
        arrays = [
            rb.column(f.name).cast(f.type) if f.name in rb.schema.names else pa.nulls(rb.num_rows, f.type)
            for f in schema
        ]
        return pa.RecordBatch.from_arrays(arrays, schema=schema)

    def batches():
        for rb in old.to_batches(batch_size=65_536):
            yield conform(rb)
        for rb in new_rows:
            yield conform(rb)

    return pa.RecordBatchReader.from_batches(schema, batches())
