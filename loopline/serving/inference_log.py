"""The inference log: every scored row appended to the Delta table predictions/M, in batches.

Requests hand their rows to `append`, which never blocks: it puts a reference on a bounded queue (bounded in
rows) and returns; when the queue is full the rows are dropped and counted (`dropped_rows`, and the
Prometheus counter), because a slow lake must never slow scoring down. A background thread turns what is
queued into Arrow batches every quarter second (so waiting rows are a few Arrow objects, not thousands of
small Python objects for the garbage collector to rescan) and writes them every `flush_seconds` (or sooner
once `flush_rows` are waiting) as one Delta commit. `stop()` writes everything still queued, so a graceful
stop loses nothing.

Table schema: the contract's feature columns and its id (typed as in clean/D; the id is null when the client
did not send it), then `_prediction`, `_model_version`, `_role` (champion, challenger or shadow),
`_request_id` and `_scored_at` (UTC).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from loopline.data.contracts import Contract
from loopline.data.schemas import ARROW_TYPES
from loopline.serving.inputs import TypedRows
from loopline.storage.lake import Lake

log = logging.getLogger(__name__)

PREDICTION = "_prediction"
COMPACT_SECONDS = 0.25  # queued entries become one Arrow batch this often (see `compact`)
META_COLUMNS = ("_model_version", "_role", "_request_id")


@dataclass
class _Entry:
    rows: TypedRows
    predictions: np.ndarray
    version: str
    role: str
    request_id: str
    scored_at: np.datetime64


def log_schema(contract: Contract) -> pa.Schema:
    """The predictions/M schema for a contract (see the module docstring)."""
    fields = [
        pa.field(c, ARROW_TYPES[contract.columns[c].type])
        for c in contract.column_names
        if c != contract.label
    ]
    label = contract.columns[contract.label]
    prediction_type = ARROW_TYPES[label.type] if contract.task == "multiclass" else pa.float64()
    if contract.task == "multiclass" and label.type == "category":
        prediction_type = pa.string()
    fields.append(pa.field(PREDICTION, prediction_type))
    fields += [pa.field(name, pa.string()) for name in META_COLUMNS]
    fields.append(pa.field("_scored_at", pa.timestamp("us", tz="UTC")))
    return pa.schema(fields)


class InferenceLog:
    def __init__(
        self,
        lake: Lake,
        model_name: str,
        contract: Contract,
        *,
        max_queue_rows: int,
        flush_rows: int,
        flush_seconds: float,
        metrics=None,
    ):
        self.lake = lake
        self.uri = lake.table_uri("predictions", model_name)
        self.schema = log_schema(contract)
        self.max_queue_rows = max_queue_rows
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.metrics = metrics
        self.dropped_rows = 0
        self.written_rows = 0
        self.queued_rows = 0
        self._items: deque[_Entry] = deque()
        self._cond = threading.Condition()
        self._lock = threading.Lock()
        self._table = None  # the open predictions table (writer thread only)
        self._batches: list[pa.Table] = []  # compacted, not yet written (touched by the writer thread only)
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- request side: never blocks ---------------------------------------------------------------
    def append(
        self, rows: TypedRows, predictions: np.ndarray, *, version: str, role: str, request_id: str
    ) -> bool:
        """Queue scored rows for the log; False (and counted) when the queue is full."""
        n = rows.n_rows
        if self.queued_rows + n > self.max_queue_rows or self._stopping:
            self.dropped_rows += n
            if self.metrics is not None:
                self.metrics.log_dropped.inc(n)
            return False
        entry = _Entry(
            rows, predictions, version, role, request_id, np.datetime64(time.time_ns() // 1000, "us")
        )
        with self._lock:  # the writer thread decrements the same counter
            self._items.append(entry)
            self.queued_rows += n
        if self.queued_rows >= self.flush_rows:
            with self._cond:
                self._cond.notify()
        return True

    # -- writer thread -----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="loopline-inference-log", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Write everything queued, then end the writer thread."""
        self._stopping = True
        with self._cond:
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        last_write = time.monotonic()
        failures = 0
        while True:
            with self._cond:
                if not self._stopping and self.queued_rows < self.flush_rows:
                    self._cond.wait(COMPACT_SECONDS)
            stopping = self._stopping
            self.compact()
            due = time.monotonic() - last_write >= self.flush_seconds or self.queued_rows >= self.flush_rows
            if self._batches and (due or stopping):
                try:
                    self.write()
                    failures = 0
                except Exception:  # the lake is unreachable: keep the rows (bounded) and retry later
                    failures += 1
                    log.exception("inference log write to %s failed", self.uri)
                    if self.metrics is not None:
                        self.metrics.log_write_errors.inc()
                    if stopping and failures < 3:
                        time.sleep(0.5)
                        continue
                last_write = time.monotonic()
            if stopping:
                return

    def compact(self) -> int:
        """Turn queued entries into one Arrow batch. Entries are many small Python objects the garbage
        collector would rescan on every full collection while they wait; a batch is one object."""
        entries: list[_Entry] = []
        with self._lock:
            while self._items:
                entries.append(self._items.popleft())
        if not entries:
            return 0
        batch = self._to_table(entries)
        self._batches.append(batch)
        return batch.num_rows

    def write(self) -> int:
        """Write the compacted batches as one Delta commit. Returns the rows written."""
        batches, self._batches = self._batches, []
        if not batches:
            return 0
        n = sum(b.num_rows for b in batches)
        try:
            from deltalake import write_deltalake

            from loopline.storage.delta import open_table

            # a held DeltaTable is updated by each write: the next write does not re-read the whole log
            if self._table is None:
                self._table = open_table(self.lake, self.uri)
            write_deltalake(
                self._table if self._table is not None else self.uri,
                pa.concat_tables(batches),
                mode="append",
                schema_mode="merge",
                storage_options=self.lake.storage_options,
            )
        except Exception:
            self._batches = batches + self._batches  # back in order, to retry
            self._table = None  # reopen: the failure may have left it stale
            raise
        with self._lock:
            self.queued_rows -= n
        self.written_rows += n
        if self.metrics is not None:
            self.metrics.log_rows.inc(n)
            self.metrics.log_queue.set(self.queued_rows)
        return n

    def flush(self) -> int:
        """Compact and write everything queued now (one commit). Returns the rows written."""
        self.compact()
        return self.write()

    def _to_table(self, entries: list[_Entry]) -> pa.Table:
        arrays = []
        for field in self.schema:
            name = field.name
            if name == PREDICTION:
                values = np.concatenate([np.asarray(e.predictions) for e in entries])
                arrays.append(
                    pa.array(values.tolist() if values.dtype == object else values, type=field.type)
                )
            elif name == "_scored_at":
                stamps = np.concatenate([np.full(e.rows.n_rows, e.scored_at) for e in entries])
                arrays.append(pa.array(stamps, type=pa.timestamp("us")).cast(field.type))
            elif name in META_COLUMNS:
                attr = {"_model_version": "version", "_role": "role", "_request_id": "request_id"}[name]
                arrays.append(_repeat_strings([(getattr(e, attr), e.rows.n_rows) for e in entries]))
            else:
                arrays.append(_column_array([e.rows.columns[name] for e in entries], field.type))
        return pa.Table.from_arrays(arrays, schema=self.schema)


def _repeat_strings(runs: list[tuple[str, int]]) -> pa.Array:
    """A string column of few distinct runs, built without a Python list per row."""
    values = pa.array([v for v, _ in runs], type=pa.string())
    index = np.repeat(np.arange(len(runs), dtype=np.int32), [n for _, n in runs])
    return values.take(pa.array(index))


def _column_array(columns, arrow_type: pa.DataType) -> pa.Array:
    values = np.concatenate([c.values for c in columns])
    if all(c.mask is None for c in columns):
        mask = None
    else:
        mask = np.concatenate([c.mask if c.mask is not None else np.zeros(len(c), bool) for c in columns])
    if values.dtype == object:
        return pa.array(values, type=arrow_type, from_pandas=True)
    return pa.array(values, type=arrow_type, mask=mask)
