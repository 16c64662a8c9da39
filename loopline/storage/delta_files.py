"""A Delta append written by pyarrow and committed as add actions: bounded memory whatever the batch's size.

delta-rs's streaming write (`write_deltalake` of a RecordBatchReader) holds memory that grows with the rows
it writes into one commit. Measured with deltalake 1.6.6 on the demo's raw rows (38 text columns, source read
without pre-buffering), one `write_deltalake` per size: peak RSS 2.6 GB at 1M rows, 3.5 GB at 3M; the same
rows through `pyarrow.parquet.ParquetWriter`: 1.48 GB and 1.54 GB. The data stage at 10M rows in one batch
peaked at 7.6 GB, in the raw/D commit (with the source's pre-buffering, loopline.storage.sources). So raw/D's
commit writes its Parquet files here, one row group per batch handed over and a new file every `FILE_BYTES`,
and commits them in ONE Delta transaction (`create_write_transaction`, or `create_table_with_add_actions` for
a table's first commit) carrying the same app transactions and metadata as loopline.storage.delta's `_commit`
would, with the same conflict semantics (the commit is made from the caller's snapshot, so a commit since then
carrying one of its app ids conflicts; a first commit is made with mode "error" and no retry).

Each add action carries the statistics a reader skips files by: numRecords, nullCount of every column, and
min/max of the columns written with statistics (integers, finite floats, and texts of at most `MAX_STAT_CHARS`
characters: delta-rs truncates longer ones, which a max must not be; other types get no min/max, which only
costs skipping). Files written for a commit that is never made (a kill, a lost race) are orphans no snapshot
references, as with delta-rs's own writer; vacuum removes them.
"""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable
from deltalake import Schema as DeltaSchema
from deltalake.transaction import AddAction, create_table_with_add_actions

FILE_BYTES = 128 << 20  # a new file once this much is written (delta-rs's default target is 100 MiB)
MAX_STAT_CHARS = 32


def local_path(uri: str) -> Path | None:
    """The folder of a table on the local filesystem, or None for an object store."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(url2pathname(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and uri[1:3] == ":\\"):
        return Path(uri)
    return None


def can_write(uri: str, snapshot: DeltaTable | None, schema: pa.Schema, mode: str) -> bool:
    """Whether this path can commit `schema`'s rows: a local table, an append, no schema change (a change
    goes through delta-rs's merge, which writes the new metadata)."""
    if mode != "append" or local_path(uri) is None:
        return False
    return snapshot is None or snapshot.schema().to_arrow() == DeltaSchema.from_arrow(schema).to_arrow()


def write_files(
    folder: Path, schema: pa.Schema, batches: Iterable[pa.RecordBatch], options: dict[str, Any]
) -> list[AddAction]:
    """Write `batches` as Parquet files in `folder` (a table's root). Returns their add actions.

    `options`: pyarrow.parquet.ParquetWriter keywords (`write_statistics` names the columns that get min/max
    in the add actions too)."""
    folder.mkdir(parents=True, exist_ok=True)
    compression = str(options.get("compression", "snappy")).lower()
    options = {**options, "compression": compression}
    stat_columns = options.get("write_statistics", True)
    stat_columns = set(schema.names if stat_columns is True else stat_columns or ())
    adds: list[AddAction] = []
    current: _File | None = None
    try:
        for batch in batches:
            if not batch.num_rows:
                continue
            if current is None:
                codec = "" if compression == "none" else f".{compression}"
                name = f"part-00000-{uuid.uuid4()}-c000{codec}.parquet"
                current = _File(folder / name, schema, options, stat_columns)
            current.write(batch)
            if current.sink.tell() >= FILE_BYTES:
                adds.append(current.close())
                current = None
        if current is not None:
            adds.append(current.close())
            current = None
    finally:
        if current is not None:
            current.abort()
    return adds


def commit_files(
    uri: str,
    schema: pa.Schema,
    adds: list[AddAction],
    snapshot: DeltaTable | None,
    props: CommitProperties,
    storage_options: dict[str, str] | None,
    configuration: dict[str, str] | None = None,
) -> None:
    """Commit `adds` in one transaction on `snapshot` (None: create the table, mode "error", with
    `configuration`: its table properties)."""
    delta_schema = DeltaSchema.from_arrow(schema)
    if snapshot is None:
        create_table_with_add_actions(
            uri,
            delta_schema,
            adds,
            mode="error",
            configuration=configuration,
            storage_options=storage_options,
            commit_properties=props,
        )
        return
    snapshot.create_write_transaction(adds, mode="append", schema=delta_schema, commit_properties=props)


@dataclass(frozen=True)
class Written:
    """Files already in a table's folder (`write_files`), for `delta.append_once` to commit as they are."""

    schema: pa.Schema
    adds: tuple[AddAction, ...]


class PreWrite:
    """`write_files` of `batches()` into `folder` on a thread, started now, for a commit decided later.

    The ingest writes clean/D's files while the GX run confirms the verdict, and commits them (`written()`)
    once it has; files never committed (a rejected batch, a commit that needed other rows) are removed by
    `discard()`, which is safe to call always: it leaves committed files alone."""

    def __init__(
        self, folder: Path, schema: pa.Schema, batches: Callable[[], Iterable[pa.RecordBatch]], options
    ):
        self.folder, self.schema = folder, schema
        self._adds: list[AddAction] = []
        self._error: BaseException | None = None
        self._committed = False

        def run() -> None:
            try:
                self._adds = write_files(folder, schema, batches(), options)
            except BaseException as exc:  # raised to the committer by written()
                self._error = exc

        self._thread = threading.Thread(target=run, name="loopline-prewrite", daemon=True)
        self._thread.start()

    def written(self) -> Written:
        """The files, once written (waits); raises what writing them raised. Marks them as committed: the
        caller commits them now, so discard() keeps them whatever happens next (an orphan is harmless, a
        committed file removed is not)."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        self._committed = True
        return Written(self.schema, tuple(self._adds))

    def discard(self) -> None:
        self._thread.join()
        if self._committed:
            return
        for add in self._adds:
            (self.folder / add.path).unlink(missing_ok=True)
        self._adds = []


class _File:
    """One Parquet file being written, with the statistics of its add action."""

    def __init__(self, path: Path, schema: pa.Schema, options: dict[str, Any], stat_columns: set[str]):
        self.path, self.schema = path, schema
        self.sink = pa.OSFile(str(path), "wb")
        self.writer = pq.ParquetWriter(self.sink, schema, **options)
        self.rows = 0
        self.nulls = dict.fromkeys(schema.names, 0)
        self.stat_columns = [
            f.name
            for f in schema
            if f.name in stat_columns
            and (pa.types.is_integer(f.type) or pa.types.is_string(f.type) or pa.types.is_floating(f.type))
        ]
        self.mins: dict[str, Any] = {}
        self.maxs: dict[str, Any] = {}
        self.unbounded: set[str] = set()  # float columns with an infinite or NaN extreme: no min/max in JSON

    def write(self, batch: pa.RecordBatch) -> None:
        self.writer.write_batch(batch, row_group_size=batch.num_rows)
        self.rows += batch.num_rows
        for name in self.schema.names:
            self.nulls[name] += batch.column(name).null_count
        for name in self.stat_columns:
            found = pc.min_max(batch.column(name))
            low, high = found["min"].as_py(), found["max"].as_py()
            if low is None:
                continue
            if isinstance(low, float) and not (math.isfinite(low) and math.isfinite(high)):
                self.unbounded.add(name)  # NaN only when every value is NaN (min_max skips NaN)
                continue
            self.mins[name] = low if name not in self.mins else min(self.mins[name], low)
            self.maxs[name] = high if name not in self.maxs else max(self.maxs[name], high)

    def close(self) -> AddAction:
        self.writer.close()
        self.sink.close()
        bounded = [
            n
            for n in self.mins
            if n not in self.unbounded
            and (
                not isinstance(self.mins[n], str)
                or max(len(self.mins[n]), len(self.maxs[n])) <= MAX_STAT_CHARS
            )
        ]
        stats = {
            "numRecords": self.rows,
            "minValues": {n: self.mins[n] for n in bounded},
            "maxValues": {n: self.maxs[n] for n in bounded},
            "nullCount": self.nulls,
        }
        return AddAction(
            path=self.path.name,
            size=self.path.stat().st_size,
            partition_values={},
            modification_time=int(time.time() * 1000),
            data_change=True,
            stats=json.dumps(stats, allow_nan=False),
        )

    def abort(self) -> None:
        try:
            self.writer.close()
        finally:
            self.sink.close()
