"""Getting one inference-log flush into Delta exactly once, or into the dead-letter table with its error.

A flush is one Arrow table of one schema, numbered by the writer (`seq`, 1, 2, ...). Every commit carries
the Delta app transaction (`app_id` of this server instance, version `seq`): Delta's own record of "this
application has committed up to here". After a failed attempt the next one first asks the table
`transaction_version(app_id)`; at or past `seq` the failure was ambiguous (the commit landed, the answer
did not, e.g. a post-commit checkpoint failed) and the flush is done, not written twice. One app id per
server instance with a rising version, rather than one app id per flush, keeps the table's transaction
state at one entry per server lifetime; it also means flushes must commit in order, which the single
writer thread does.

A flush whose retries are spent goes to the dead-letter table `predictions_deadletter/M` beside
`predictions/M` (same lake, same commit scheme): one row per logged row, the row itself as JSON (so any
schema fits, and nothing about a rejected schema can reject the dead letter too), the error, the attempts,
the flush number and the writer. Rows there can be replayed into predictions/M once the cause is fixed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from loopline.storage.lake import Lake

log = logging.getLogger(__name__)

DEADLETTER_KIND = "predictions_deadletter"
MAX_RETRY_SECONDS = 30.0
ROW_META = ("_model_version", "_role", "_request_id")

DEADLETTER_SCHEMA = pa.schema(
    [
        pa.field("_model_version", pa.string()),
        pa.field("_role", pa.string()),
        pa.field("_request_id", pa.string()),
        pa.field("_scored_at", pa.timestamp("us", tz="UTC")),
        pa.field("_row", pa.string()),  # the whole logged row (features, id, _prediction, ...) as JSON
        pa.field("_error", pa.string()),
        pa.field("_attempts", pa.int64()),
        pa.field("_flush_seq", pa.int64()),
        pa.field("_writer", pa.string()),
        pa.field("_failed_at", pa.timestamp("us", tz="UTC")),
    ]
)


@dataclass
class Flush:
    """One commit's worth of rows of one schema, in the order the writer numbered it."""

    seq: int
    table: pa.Table | None  # None: the rows could not even be built (see `records`)
    records: list[dict[str, Any]] = field(default_factory=list)  # rows as plain values, when `table` is None
    attempts: int = 0  # failed tries at predictions/M
    deadletter_attempts: int = 0
    error: str = ""
    next_try: float = 0.0
    dead: bool = False  # retries spent: bound for the dead-letter table

    @property
    def rows(self) -> int:
        return self.table.num_rows if self.table is not None else len(self.records)


class DeltaAppender:
    """Idempotent appends to the log's tables with one app id; keeps each table open between commits."""

    def __init__(self, lake: Lake, app_id: str):
        self.lake = lake
        self.app_id = app_id
        self._tables: dict[str, Any] = {}

    def _open(self, uri: str):
        table = self._tables.get(uri)
        if table is None:
            from loopline.storage.delta import open_table

            table = open_table(self.lake, uri)
            if table is not None:
                self._tables[uri] = table
        return table

    def forget(self, uri: str) -> None:
        """Drop the held snapshot: after a failure it may be stale (reopened on the next use)."""
        self._tables.pop(uri, None)

    def landed(self, uri: str, seq: int) -> bool:
        """Whether this writer's commit number `seq` is in the table (read from a fresh snapshot)."""
        self.forget(uri)
        table = self._open(uri)
        return table is not None and (table.transaction_version(self.app_id) or 0) >= seq

    def commit(self, uri: str, data: pa.Table, seq: int) -> None:
        from deltalake import CommitProperties, Transaction, write_deltalake

        from loopline.storage.delta import table_configuration

        table = self._open(uri)
        props = CommitProperties(
            app_transactions=[Transaction(app_id=self.app_id, version=seq)],
            custom_metadata={"loopline.writer": self.app_id, "loopline.flush_seq": str(seq)},
        )
        # a held DeltaTable is updated by the write: the next commit does not re-read the whole log
        write_deltalake(
            table if table is not None else uri,
            data,
            mode="append",
            schema_mode="merge",  # a champion whose contract added a column adds it to the table
            storage_options=self.lake.storage_options,
            commit_properties=props,
            # created here: `_scored_at` among the statistics columns, so a drift window skips files by time
            configuration=table_configuration(data.schema) if table is None else None,
        )


def retry_delay(first_seconds: float, failures: int) -> float:
    return min(first_seconds * 2 ** max(failures - 1, 0), MAX_RETRY_SECONDS)


def deadletter_table(flush: Flush, writer: str) -> pa.Table:
    """The dead-letter rows of a flush (see the module docstring)."""
    rows = flush.table.to_pylist() if flush.table is not None else flush.records
    n = len(rows)
    now = np.datetime64(time.time_ns() // 1000, "us")
    columns = {name: [r.get(name) for r in rows] for name in ROW_META}
    scored = [r.get("_scored_at") for r in rows]
    data = {
        **columns,
        "_scored_at": pa.array(scored, type=pa.timestamp("us", tz="UTC")),
        "_row": [orjson.dumps(r, default=str, option=orjson.OPT_SERIALIZE_NUMPY).decode() for r in rows],
        "_error": [flush.error] * n,
        "_attempts": [flush.attempts] * n,
        "_flush_seq": [flush.seq] * n,
        "_writer": [writer] * n,
        "_failed_at": pa.array(np.full(n, now), type=pa.timestamp("us")).cast(pa.timestamp("us", tz="UTC")),
    }
    return pa.table(data, schema=DEADLETTER_SCHEMA)


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]
