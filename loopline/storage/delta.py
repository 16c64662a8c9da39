"""Small, shared Delta Lake helpers: open a table (or None), idempotent appends, versions.

Idempotency: every write that must happen once per batch carries a Delta app transaction
(`app_id`, version 1). A retry asks `transaction_version(app_id)` first and skips what already
committed, so a crash half-way through a batch never duplicates rows.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import TableNotFoundError

from loopline.storage.lake import Lake


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


def table_version(lake: Lake, uri: str) -> int | None:
    table = open_table(lake, uri)
    return None if table is None else table.version()


def is_committed(table: DeltaTable | None, app_id: str) -> bool:
    return table is not None and (table.transaction_version(app_id) or 0) >= 1


def append_once(
    lake: Lake,
    uri: str,
    data: pa.Table | pa.RecordBatchReader,
    *,
    app_id: str,
    metadata: dict[str, Any] | None = None,
    mode: str = "append",
    table: DeltaTable | None = None,
) -> tuple[int | None, bool]:
    """Append `data` in one commit unless `app_id` already committed. Returns (table version, written).
    `table`: the snapshot the caller built `data` from (an overwrite that rewrites the rows it read); the
    commit is checked against it, so a commit by anyone else since then is a conflict, not lost rows."""
    table = table if table is not None else open_table(lake, uri)
    if is_committed(table, app_id):
        return table.version(), False
    props = CommitProperties(
        app_transactions=[Transaction(app_id=app_id, version=1)],
        custom_metadata={k: str(v) for k, v in (metadata or {}).items()},
    )
    write_deltalake(
        uri if table is None else table,  # the snapshot checked above: a commit since then is a conflict
        data,
        mode=mode,
        schema_mode="merge" if mode == "append" else "overwrite",
        storage_options=lake.storage_options,
        commit_properties=props,
    )
    return table_version(lake, uri), True


def read_column(lake: Lake, uri: str, columns: list[str], version: int | None = None) -> pa.Table | None:
    """Selected columns of a table (None if no table): cheap thanks to Parquet's column pruning."""
    table = open_table(lake, uri, version)
    if table is None:
        return None
    return dataset(table).to_table(columns=columns)
