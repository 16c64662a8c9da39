"""Small, shared Delta Lake helpers: open a table (or None), idempotent appends, versions.

Idempotency: every write that must happen once per batch carries a Delta app transaction
(`app_id`, version 1). A retry asks `transaction_version(app_id)` first and skips what already
committed, so a crash half-way through a batch never duplicates rows.

Concurrency (exactly once under concurrent writers): a commit is made from the snapshot its "already
committed?" check read, so delta-rs's conflict checker rejects it ("Concurrent transaction failed") when a
commit made since that snapshot carries one of its app ids: two writers of the same unit of work cannot both
commit it. A table with one logical writer at a time (clean/D, features/D) also gives every commit a
`writer` app transaction (the same id for every writer of the table, version previous + 1), so ANY two
concurrent commits conflict and the loser re-reads before it retries (`retry_conflicts`). Creating a table is
the one place delta-rs does not check this (a writer that loses the race for version 0 retries at version 1
without looking at the app ids of version 0: measured with deltalake 1.6.6, two of six writers of the same app
id both committed), so a first commit is made with mode "error" and no commit retries: a lost race raises
CommitFailedError like any other conflict.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar
from urllib.parse import urlparse
from urllib.request import url2pathname

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
from deltalake import CommitProperties, DeltaTable, Transaction, WriterProperties, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError

from loopline.storage import delta_files
from loopline.storage.lake import Lake

T = TypeVar("T")
Data = pa.Table | pa.RecordBatchReader | Callable[[], pa.RecordBatchReader] | delta_files.Written
CONFLICT_ATTEMPTS = 12  # conflicts in a row before giving up: each one means another writer committed
LATEST = object()  # append_once's default snapshot: the table as it is now
# Delta keeps min/max statistics of a table's first 32 columns only (delta.dataSkippingNumIndexedCols). The
# batch metadata comes after the contract's columns in raw/D, quarantine/D, clean/D and predictions/M, so on
# a dataset of 30-odd columns or more no reader could skip a file by its batch (or a drift window by its
# time) from the log: a table created with `table_configuration` lists these columns too in
# delta.dataSkippingStatsColumns (with the first 32, as before)
INDEXED_COLUMNS = 32
SKIPPING_META = ("_batch_id", "_ingested_at", "_row", "_split", "_transform", "_scored_at")


class CommitRetriesExhausted(RuntimeError):
    """Every attempt of a commit lost to a concurrent writer. Not a user error: running it again works."""


def open_table(lake: Lake, uri: str, version: int | None = None) -> DeltaTable | None:
    """The Delta table at `uri` (at `version` if given), or None when no table exists there."""
    try:
        return DeltaTable(uri, version=version, storage_options=lake.storage_options)
    except TableNotFoundError:
        return None


def dataset(table: DeltaTable) -> pads.Dataset:
    """`table.to_pyarrow_dataset()`, read through Arrow's own filesystem when the table is local.

    deltalake's default reads through a filesystem implemented in Python; Arrow's I/O threads calling it
    can abort the process as the interpreter exits ("terminate called without an active exception",
    apache/arrow#39862): `loopline status` did so about one run in four. S3 tables keep deltalake's
    object store (it carries the lake's endpoint and credentials)."""
    parsed = urlparse(table.table_uri)
    if parsed.scheme in ("", "file"):
        root = url2pathname(parsed.path) if parsed.scheme else table.table_uri
        return table.to_pyarrow_dataset(filesystem=pafs.SubTreeFileSystem(root, pafs.LocalFileSystem()))
    return table.to_pyarrow_dataset()


def add_actions(table: DeltaTable) -> pa.Table:
    """The snapshot's add actions with their statistics flattened (`num_records`, `min.<column>`, ...):
    read from the Delta log only."""
    return pa.table(table.get_add_actions(flatten=True))


def files_and_rows(table: DeltaTable, actions: pa.Table | None = None) -> tuple[int, int]:
    """(data files, rows) of a table's snapshot, from its add actions' statistics: no data file is read."""
    actions = add_actions(table) if actions is None else actions
    if not actions.num_rows:
        return 0, 0
    return actions.num_rows, int(sum(v or 0 for v in actions.column("num_records").to_pylist()))


def table_configuration(schema: pa.Schema) -> dict[str, str] | None:
    """The properties a new table with `schema` is created with: its statistics columns where the batch
    metadata falls past the first INDEXED_COLUMNS columns (see SKIPPING_META), else None (Delta's default)."""
    late = [n for n in schema.names[INDEXED_COLUMNS:] if n in SKIPPING_META]
    if not late:
        return None
    quoted = ["`" + n.replace("`", "``") + "`" for n in [*schema.names[:INDEXED_COLUMNS], *late]]
    return {"delta.dataSkippingStatsColumns": ",".join(quoted)}  # backticks: any column name (spaces, commas)


def distinct_from_log(table: DeltaTable, column: str, actions: pa.Table | None = None) -> list | None:
    """`column`'s distinct values from the snapshot's add actions (`actions`, when the caller read them
    already), where every file's min equals its max (a file holds one batch): no data file is read. None
    when a file's statistics do not settle it (a table without statistics for `column`, or a file holding
    several values); an empty table gives []."""
    actions = add_actions(table) if actions is None else actions
    if not actions.num_rows:
        return []
    low, high = f"min.{column}", f"max.{column}"
    if low not in actions.column_names or high not in actions.column_names:
        return None
    lows, highs = actions.column(low).to_pylist(), actions.column(high).to_pylist()
    counted = f"null_count.{column}"
    nulls = actions.column(counted).to_pylist() if counted in actions.column_names else None
    if nulls is None or any(n != 0 for n in nulls):
        return None  # a null (or an unknown count) is a value the min/max do not show
    if any(a is None or a != b for a, b in zip(lows, highs, strict=True)):
        return None
    return list(dict.fromkeys(lows))


def table_version(lake: Lake, uri: str) -> int | None:
    table = open_table(lake, uri)
    return None if table is None else table.version()


def is_committed(table: DeltaTable | None, app_id: str) -> bool:
    return table is not None and (table.transaction_version(app_id) or 0) >= 1


def append_once(
    lake: Lake,
    uri: str,
    data: Data,
    *,
    app_id: str | Sequence[str],
    metadata: dict[str, Any] | None = None,
    mode: str = "append",
    table: DeltaTable | None | object = LATEST,
    writer: str | None = None,
    writer_properties: WriterProperties | None = None,
    parquet_options: dict[str, Any] | None = None,
) -> tuple[int | None, bool]:
    """Commit `data` in one commit unless its app id(s) already committed. Returns (table version, written).

    `app_id`: one id, or several naming one unit of work (features: one per batch); the commit carries each
    (version 1) and is skipped when every one of them already committed.
    `table`: the snapshot the caller built `data` from (its "already done?" reading, or an overwrite that
    rewrites the rows it read; None: the caller saw no table); the commit is checked against it, so a commit
    by anyone else since then that carries one of the same app ids (or `writer`) raises CommitFailedError for
    the caller to re-read and retry. Without `table`, the data does not depend on the table: a conflict is
    retried here from a fresh snapshot when `data` can be read again (a table, or a callable returning a new
    reader), else raised.
    `writer`: an app id every writer of this table uses; the commit carries it with version previous + 1, so
    any two concurrent commits conflict (see the module docstring).
    `writer_properties`: how the Parquet files are encoded (loopline.data.encoding); None: delta-rs's defaults.
    `parquet_options`: write the files with pyarrow (these ParquetWriter keywords, in place of
    `writer_properties`) and commit them as add actions, in bounded memory (loopline.storage.delta_files),
    where that path can: a local table, an append, no schema change; elsewhere delta-rs writes them.
    `data` may also be `delta_files.Written`: files already written into the table's folder (by the caller,
    who checked `delta_files.can_write`), committed as they are.
    Either way, a conflict whose winner committed these very app ids is a skip, not an error."""
    ids = [app_id] if isinstance(app_id, str) else list(app_id)
    replayable = table is LATEST and (isinstance(data, pa.Table) or callable(data))
    snapshot = open_table(lake, uri) if table is LATEST else table
    for attempt in range(CONFLICT_ATTEMPTS if replayable else 1):
        if attempt:
            backoff(attempt)
            snapshot = open_table(lake, uri)
        if snapshot is not None and all(is_committed(snapshot, i) for i in ids):
            return snapshot.version(), False
        try:
            return _commit(
                lake,
                uri,
                data() if callable(data) else data,
                snapshot,
                ids,
                metadata,
                mode,
                writer,
                writer_properties,
                parquet_options,
            )
        except CommitFailedError:
            latest = open_table(lake, uri)
            if latest is not None and all(is_committed(latest, i) for i in ids):
                return latest.version(), False  # a concurrent writer of the same unit of work won
            if attempt == CONFLICT_ATTEMPTS - 1 or not replayable:
                raise
    raise AssertionError("unreachable")


def _commit(
    lake: Lake,
    uri: str,
    data: pa.Table | pa.RecordBatchReader,
    snapshot: DeltaTable | None,
    ids: list[str],
    metadata: dict[str, Any] | None,
    mode: str,
    writer: str | None,
    writer_properties: WriterProperties | None = None,
    parquet_options: dict[str, Any] | None = None,
) -> tuple[int | None, bool]:
    txns = [Transaction(app_id=i, version=1) for i in ids]
    if writer is not None:
        previous = (snapshot.transaction_version(writer) or 0) if snapshot is not None else 0
        txns.append(Transaction(app_id=writer, version=previous + 1))
    custom = {k: str(v) for k, v in (metadata or {}).items()}
    if isinstance(data, delta_files.Written):  # files already in the table's folder: commit them as they are
        return _commit_adds(lake, uri, data.schema, list(data.adds), snapshot, txns, custom)
    if parquet_options is not None and delta_files.can_write(uri, snapshot, data.schema, mode):
        return _commit_files(lake, uri, data, snapshot, txns, custom, parquet_options)
    if snapshot is None:  # creating the table: no retry at version 1 behind delta-rs's back
        props = CommitProperties(app_transactions=txns, custom_metadata=custom, max_commit_retries=0)
        with _created_concurrently(uri):
            write_deltalake(
                uri,
                data,
                mode="error",
                storage_options=lake.storage_options,
                commit_properties=props,
                writer_properties=writer_properties,
                configuration=table_configuration(data.schema),
            )
        return 0, True
    props = CommitProperties(app_transactions=txns, custom_metadata=custom)
    write_deltalake(
        snapshot,  # the snapshot checked above: a commit since then carrying our app ids is a conflict
        data,
        mode=mode,
        schema_mode="merge" if mode == "append" else "overwrite",
        storage_options=lake.storage_options,
        commit_properties=props,
        writer_properties=writer_properties,
    )
    return table_version(lake, uri), True


@contextlib.contextmanager
def _created_concurrently(uri: str) -> Iterator[None]:
    """Creating a table another writer created first is a commit conflict (re-read and retry), as in appends."""
    try:
        yield
    except CommitFailedError:
        raise
    except DeltaError as exc:
        if "already exists" not in str(exc):
            raise
        raise CommitFailedError(f"{uri} was created concurrently: {exc}") from exc


def _commit_files(
    lake: Lake,
    uri: str,
    data: pa.Table | pa.RecordBatchReader,
    snapshot: DeltaTable | None,
    txns: list[Transaction],
    custom: dict[str, str],
    options: dict[str, Any],
) -> tuple[int | None, bool]:
    """`_commit` through loopline.storage.delta_files: pyarrow writes the files, one transaction adds them."""
    folder = delta_files.local_path(uri)
    assert folder is not None
    batches = data.to_batches() if isinstance(data, pa.Table) else data
    adds = delta_files.write_files(folder, data.schema, batches, options)
    return _commit_adds(lake, uri, data.schema, adds, snapshot, txns, custom)


def _commit_adds(
    lake: Lake,
    uri: str,
    schema: pa.Schema,
    adds: list,
    snapshot: DeltaTable | None,
    txns: list[Transaction],
    custom: dict[str, str],
) -> tuple[int | None, bool]:
    """One transaction adding `adds` (files in the table's folder) to `snapshot` (None: creating the table)."""
    if snapshot is None:
        props = CommitProperties(app_transactions=txns, custom_metadata=custom, max_commit_retries=0)
        with _created_concurrently(uri):
            delta_files.commit_files(
                uri, schema, adds, None, props, lake.storage_options, table_configuration(schema)
            )
        return 0, True
    props = CommitProperties(app_transactions=txns, custom_metadata=custom)
    delta_files.commit_files(uri, schema, adds, snapshot, props, lake.storage_options)
    return table_version(lake, uri), True


def backoff(attempt: int, base: float = 0.05, cap: float = 2.0) -> None:
    """Sleep before retry `attempt` (1, 2, ...): exponential with full jitter, so racing writers spread out."""
    time.sleep(random.uniform(0.5, 1.5) * min(cap, base * 2 ** (attempt - 1)))


def retry_conflicts(work: Callable[[], T], what: str, attempts: int = CONFLICT_ATTEMPTS) -> T:
    """Run `work` (which re-reads the tables it commits to) until its commit does not conflict.

    Each CommitFailedError means a concurrent writer committed first; `work` runs again from the new snapshot.
    After `attempts` in a row, raises CommitRetriesExhausted naming `what`."""
    for attempt in range(attempts):
        if attempt:
            backoff(attempt)
        try:
            return work()
        except CommitFailedError as exc:
            last = exc
    raise CommitRetriesExhausted(
        f"{what}: {attempts} commits in a row lost to concurrent writers (last: {last}). Every commit is "
        "idempotent: running it again completes it"
    )


def read_column(lake: Lake, uri: str, columns: list[str], version: int | None = None) -> pa.Table | None:
    """Selected columns of a table (None if no table): cheap thanks to Parquet's column pruning."""
    table = open_table(lake, uri, version)
    if table is None:
        return None
    return dataset(table).to_table(columns=columns)
