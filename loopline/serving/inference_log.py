"""The inference log: every scored row appended to the Delta table predictions/M, in batches, never dying.

The micro-batcher hands each model call's rows to `append_batch` (one entry per batch, whatever its
request count; `append` takes one request's), which never blocks: it puts a reference on a queue bounded
in rows (rows waiting for a retry count too) and returns; when the queue is full the rows are dropped and
counted (`dropped_rows`, and the Prometheus counter), because a slow lake must never slow scoring down.
A background thread turns what is queued into Arrow batches every quarter second (so waiting rows are a few
Arrow objects, not thousands of small Python objects for the garbage collector to rescan) and seals them every
`flush_seconds` (or sooner once `flush_rows` are waiting) into numbered flushes, one Delta commit each.

Every row is logged with the schema of the model that scored it (its contract's columns), so a shadow
challenger with another contract, or a hot swap to a champion whose contract dropped or added a column,
still lands: rows of one schema make one commit, and Delta's schema merge adds a new column to the table
(a dropped one is null in the new rows). A failed commit is retried with a doubling delay; after
`write_attempts` tries its rows go to the dead-letter table with the error (`log_delivery`); each commit
carries a Delta app transaction, so a retry after an ambiguous failure that did commit writes nothing
twice. The writer thread survives any error: it logs and counts it and goes on. `stop()` writes everything
still queued (retrying within its timeout), so a graceful stop loses nothing the lake accepts.

The table's schema: `log_rows.log_schema`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections import deque

import numpy as np
import pyarrow as pa

from loopline.data.contracts import Contract
from loopline.serving.inputs import TypedRows
from loopline.serving.log_delivery import (
    DEADLETTER_KIND,
    DeltaAppender,
    Flush,
    deadletter_table,
    describe,
    retry_delay,
)
from loopline.serving.log_rows import (
    PREDICTION,
    LogEntry,
    entry_meta,
    entry_records,
    log_schema,
    to_table,
)
from loopline.storage.lake import Lake

log = logging.getLogger(__name__)

__all__ = ["PREDICTION", "InferenceLog", "log_schema"]

COMPACT_SECONDS = 0.25  # queued entries become one Arrow batch this often (see `compact`)


def instance_id() -> str:
    """This server process, in app transaction ids and dead-letter rows: host, pid and a random part."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


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
        write_attempts: int = 4,
        retry_seconds: float = 0.5,
        metrics=None,
        writer_id: str | None = None,
    ):
        self.lake = lake
        self.uri = lake.table_uri("predictions", model_name)
        # beside predictions/M; lake.uri, not table_uri: it is no per-dataset table kind `status` lists
        self.deadletter_uri = lake.uri(DEADLETTER_KIND, model_name)
        self.schema = log_schema(contract)
        self._schemas: dict[int, tuple[Contract, pa.Schema]] = {id(contract): (contract, self.schema)}
        self.max_queue_rows = max_queue_rows
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.write_attempts = write_attempts
        self.retry_seconds = retry_seconds
        self.metrics = metrics
        self.writer_id = writer_id or instance_id()
        self.app_id = f"loopline.serving/{model_name}/{self.writer_id}"
        self.appender = DeltaAppender(lake, self.app_id)
        self.dropped_rows = 0
        self.written_rows = 0
        self.deadletter_rows = 0
        self.write_failures = 0  # failed attempts (predictions or dead-letter table)
        self.retries = 0
        self.found_on_retry = 0  # retries that found their commit had landed (ambiguous failures)
        self.queued_rows = 0  # everything not yet written or dead-lettered
        self._unsealed_rows = 0  # queued or compacted, not yet in a flush
        self._items: deque[LogEntry] = deque()
        self._batches: list[tuple[pa.Schema, pa.Table]] = []  # compacted (writer thread only)
        self._flushes: deque[Flush] = deque()  # sealed, in commit order (writer thread only)
        self._seq = 0
        self._cond = threading.Condition()
        self._lock = threading.Lock()
        self._stopping = False
        self._stop_deadline = float("inf")
        self._thread: threading.Thread | None = None

    # -- request side: never blocks ---------------------------------------------------------------
    def schema_for(self, contract: Contract | None) -> pa.Schema:
        if contract is None:
            return self.schema
        found = self._schemas.get(id(contract))
        if found is None:
            if len(self._schemas) > 32:  # one per loaded version; forget the oldest after many swaps
                self._schemas.pop(next(iter(self._schemas)))
            found = self._schemas[id(contract)] = (contract, log_schema(contract))
        return found[1]

    def append(
        self,
        rows: TypedRows,
        predictions: np.ndarray,
        *,
        version: str,
        role: str,
        request_id: str,
        contract: Contract | None = None,
    ) -> bool:
        """Queue the rows of one request scored by a model of `contract` (default: the start-up champion's);
        False (and counted) when the queue is full."""
        return self.append_batch(
            rows, predictions, version=version, requests=[(request_id, role, rows.n_rows)], contract=contract
        )

    def append_batch(
        self,
        rows: TypedRows,
        predictions: np.ndarray,
        *,
        version: str,
        requests: list[tuple[str, str, int]],
        contract: Contract | None = None,
    ) -> bool:
        """Queue the rows of one model call: `requests` gives each request's (id, role, rows), in row order.
        One entry for the whole batch, so the per-request cost of logging is a tuple. False (and counted)
        when the queue is full."""
        n = rows.n_rows
        if self.queued_rows + n > self.max_queue_rows or self._stopping:
            self._drop(n)
            return False
        entry = LogEntry(
            rows,
            predictions,
            version,
            requests,
            np.datetime64(time.time_ns() // 1000, "us"),
            self.schema_for(contract),
        )
        with self._lock:  # the writer thread decrements the same counters
            self._items.append(entry)
            self.queued_rows += n
            self._unsealed_rows += n
        if self._unsealed_rows >= self.flush_rows:
            with self._cond:
                self._cond.notify()
        return True

    def _drop(self, n: int) -> None:
        self.dropped_rows += n
        if self.metrics is not None:
            self.metrics.log_dropped.inc(n)

    # -- writer thread -----------------------------------------------------------------------------
    def start(self) -> None:
        # the Delta writer's modules (deltalake, pyarrow.dataset: ~0.3 s) are imported now, before the server
        # answers, not at the first flush, where the import would hold the GIL while requests wait
        import loopline.storage.delta  # noqa: F401

        self._thread = threading.Thread(target=self._run, name="loopline-inference-log", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Write everything queued (retrying for up to `timeout`), then end the writer thread."""
        self._stop_deadline = time.monotonic() + timeout * 0.9
        self._stopping = True
        with self._cond:
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        last_seal = time.monotonic()
        while True:
            with self._cond:
                if not self._stopping and self._unsealed_rows < self.flush_rows:
                    self._cond.wait(COMPACT_SECONDS)
            stopping = self._stopping
            try:
                self.compact()
                now = time.monotonic()
                if self._batches and (
                    stopping
                    or now - last_seal >= self.flush_seconds
                    or self._unsealed_rows >= self.flush_rows
                ):
                    self.seal()
                    last_seal = now
                self.deliver()
            except Exception:  # a bug must not end the log: every later row would be lost silently
                log.exception("inference log writer error (it carries on)")
                self._count_failure()
            if stopping:
                if not (self._items or self._batches or self._flushes):
                    return
                if time.monotonic() >= self._stop_deadline:
                    self._give_up("the server stopped before the lake took them")
                    return
                wait = min((f.next_try for f in self._flushes), default=0.0) - time.monotonic()
                time.sleep(min(max(wait, 0.01), 0.25))

    def compact(self) -> int:
        """Turn queued entries into one Arrow batch per schema. Entries are many small Python objects the
        garbage collector would rescan on every full collection while they wait; a batch is one object."""
        entries: list[LogEntry] = []
        with self._lock:
            while self._items:
                entries.append(self._items.popleft())
        if not entries:
            return 0
        groups: list[tuple[pa.Schema, list[LogEntry]]] = []
        for e in entries:
            for schema, members in groups:
                if schema is e.schema or schema.equals(e.schema):
                    members.append(e)
                    break
            else:
                groups.append((e.schema, [e]))
        for schema, members in groups:
            try:
                self._batches.append((schema, to_table(members, schema)))
            except Exception:  # some entry does not fit its schema: build them one by one
                for member in members:
                    self._compact_one(member)
        return sum(e.rows.n_rows for e in entries)

    def _compact_one(self, entry: LogEntry) -> None:
        """One entry as its own batch; rows no table can hold (a model that answered the wrong number of
        predictions, say) go straight to the dead-letter table with the error."""
        try:
            self._batches.append((entry.schema, to_table([entry], entry.schema)))
        except Exception as exc:
            log.exception(
                "inference log: %d rows of request %s cannot be logged", entry.rows.n_rows, entry.request_id
            )
            self._seq += 1
            with self._lock:
                self._unsealed_rows -= entry.rows.n_rows
            try:
                records = entry_records(entry)
            except Exception:  # not even plain values: keep who, when and the error
                records = entry_meta(entry)
            self._flushes.append(Flush(self._seq, None, records, dead=True, error=describe(exc)))

    def seal(self) -> None:
        """Compacted batches -> numbered flushes, one per schema (one Delta commit each)."""
        groups: list[tuple[pa.Schema, list[pa.Table]]] = []
        for schema, table in self._batches:
            for s, tables in groups:
                if s.equals(schema):
                    tables.append(table)
                    break
            else:
                groups.append((schema, [table]))
        self._batches = []
        for _, tables in groups:
            self._seq += 1
            flush = Flush(self._seq, pa.concat_tables(tables))
            self._flushes.append(flush)
            with self._lock:
                self._unsealed_rows -= flush.rows

    def deliver(self) -> int:
        """Commit the due flushes in order (a later one never overtakes an earlier one). Returns rows done."""
        done = 0
        while self._flushes and self._flushes[0].next_try <= time.monotonic():
            flush = self._flushes[0]
            if not self._deliver(flush):
                break
            self._flushes.popleft()
            with self._lock:
                self.queued_rows -= flush.rows
            done += flush.rows
        if self.metrics is not None:
            self.metrics.log_queue.set(self.queued_rows)
        return done

    def flush(self) -> int:
        """Compact, seal and commit everything queued now. Returns the rows written or dead-lettered."""
        self.compact()
        self.seal()
        return self.deliver()

    def _deliver(self, flush: Flush) -> bool:
        """One try at a flush: predictions/M, or the dead-letter table once its tries are spent."""
        if not flush.dead:
            try:
                if flush.attempts and self.appender.landed(self.uri, flush.seq):
                    self._found_landed(flush)
                elif flush.table is not None:
                    self.appender.commit(self.uri, flush.table, flush.seq)
                self._written(flush.rows)
                return True
            except Exception as exc:
                flush.attempts += 1
                self._failed(flush, exc, self.uri, flush.attempts)
                if flush.attempts < self.write_attempts:
                    return False
                flush.dead = True
                flush.next_try = 0.0
                log.error(
                    "inference log: flush %d (%d rows) failed %d times; it goes to %s",
                    flush.seq,
                    flush.rows,
                    flush.attempts,
                    self.deadletter_uri,
                )
        try:
            if flush.table is not None and self._landed_quietly(flush.seq):  # the last try did land
                self._found_landed(flush)
                self._written(flush.rows)
                return True
            if not (flush.deadletter_attempts and self.appender.landed(self.deadletter_uri, flush.seq)):
                self.appender.commit(self.deadletter_uri, deadletter_table(flush, self.writer_id), flush.seq)
            self.deadletter_rows += flush.rows
            if self.metrics is not None:
                self.metrics.log_deadletter_rows.inc(flush.rows)
            return True
        except Exception as exc:
            flush.deadletter_attempts += 1
            self._failed(flush, exc, self.deadletter_uri, flush.deadletter_attempts)
            return False

    def _landed_quietly(self, seq: int) -> bool:
        try:
            return self.appender.landed(self.uri, seq)
        except Exception:  # cannot tell (the table is unreachable): the dead letter keeps the rows
            return False

    def _found_landed(self, flush: Flush) -> None:
        self.found_on_retry += 1
        log.warning("inference log: flush %d had landed before its failure was reported", flush.seq)
        if self.metrics is not None:
            self.metrics.log_found_on_retry.inc()

    def _written(self, n: int) -> None:
        self.written_rows += n
        if self.metrics is not None:
            self.metrics.log_rows.inc(n)

    def _failed(self, flush: Flush, exc: Exception, uri: str, failures: int) -> None:
        flush.error = describe(exc)
        flush.next_try = time.monotonic() + retry_delay(self.retry_seconds, failures)
        self.appender.forget(uri)
        self._count_failure()
        self.retries += 1
        if self.metrics is not None:
            self.metrics.log_retries.inc()
        log.warning(
            "inference log: flush %d to %s failed (try %d): %s", flush.seq, uri, failures, flush.error
        )

    def _count_failure(self) -> None:
        self.write_failures += 1
        if self.metrics is not None:
            self.metrics.log_write_errors.inc()

    def _give_up(self, why: str) -> None:
        lost = self.queued_rows
        log.error("inference log: %d rows not written (%s)", lost, why)
        self._drop(lost)
        with self._lock:
            self._items.clear()
            self.queued_rows = self._unsealed_rows = 0
        self._batches, self._flushes = [], deque()
