"""The raw commit of one batch, pipelined: chunks stream from the file through the gate into ONE raw/D Delta
commit written on its own thread, while each chunk's clean and quarantined rows are staged as local Parquet
files (`stage/clean`, `stage/quarantine`) for the clean/D and quarantine/D commits that follow once the whole
batch has passed. Staged clean rows keep their row number in the batch (`_row`, not committed to clean/D): a row
that a concurrent ingest's commit turns into a duplicate moves to quarantine as raw/D holds it (loopline.data.
clean_commit).
"""

from __future__ import annotations

import queue
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake import WriterProperties

from loopline.config import LifecycleConfig
from loopline.data.contracts import Contract
from loopline.data.encoding import FEW_VALUED_META, RAW_CODEC, few_valued, staging_options
from loopline.data.prefetch import Prefetch, read_ahead
from loopline.data.schemas import clean_schema, quarantine_schema, raw_schema
from loopline.faults import kill_point
from loopline.storage import delta, sources
from loopline.storage.lake import Lake

_DONE = object()


def write_pipelined(
    lake: Lake,
    uri: str,
    schema: pa.Schema,
    stream: Iterable[pa.RecordBatch],
    app_id: str,
    metadata: dict,
    *,
    writer_properties: WriterProperties | None = None,
    parquet_options: dict | None = None,
    while_committing: Callable[[], None] | None = None,
) -> None:
    """Stream `stream`'s record batches into one Delta commit, with the writer on its own thread.

    `while_committing()`: runs here once the stream is exhausted, while the writer encodes its last batches and
    commits (the ingest judges the batch then: the GX run overlaps the commit's tail instead of following it).
    Its error is raised once the writer has finished, whether or not the commit was made.

    Reading + validating chunk i+1 (Python) overlaps with encoding chunk i to Parquet (pyarrow with
    `parquet_options`, else delta-rs; no GIL either way); a queue of four batches bounds memory, and so does
    the pyarrow writer, whatever the batch's size (loopline.storage.delta_files). An error on either side
    aborts the commit: nothing is committed.
    """
    pipe: queue.Queue = queue.Queue(maxsize=4)
    failure: list[BaseException] = []

    def batches() -> Iterator[pa.RecordBatch]:
        while (item := pipe.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
            kill_point("ingest.raw_writing")  # files of the raw commit written, the commit not made

    def write() -> None:
        try:
            delta.append_once(
                lake,
                uri,
                pa.RecordBatchReader.from_batches(schema, batches()),
                app_id=app_id,
                metadata=metadata,
                writer_properties=writer_properties,
                parquet_options=parquet_options,
            )
        except BaseException as exc:  # reported to the reading side below
            failure.append(exc)

    writer = threading.Thread(target=write, name="loopline-raw-writer", daemon=True)

    def hand(item) -> None:
        """Queue `item` for the writer; never block on a writer that died or had nothing to write."""
        while True:
            if failure:
                raise failure[0]
            if not writer.is_alive():  # it found the batch committed (a concurrent twin): keep validating
                return
            try:
                pipe.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    writer.start()
    try:
        for batch in stream:
            hand(batch)
        hand(_DONE)
    except BaseException as exc:
        if writer.is_alive():
            pipe.put(RuntimeError(f"aborted: {exc}"))
        writer.join()
        raise
    try:
        if while_committing is not None:
            while_committing()
    finally:
        writer.join()
    if failure:
        raise failure[0]


def raw_parquet_options(contract: Contract, schema: pa.Schema) -> dict:
    """pyarrow's encoding of raw/D's files, as `encoding.raw_properties` gives delta-rs's: a dictionary on
    the few-valued columns and the batch metadata, min/max statistics on the metadata columns only, zstd level 1 (`encoding.RAW_CODEC`)."""
    text = {*contract.column_names, "_extra", "_reasons"}
    few = {*few_valued(contract), *FEW_VALUED_META}
    return {
        "compression": RAW_CODEC[0],
        "compression_level": RAW_CODEC[1],
        "use_dictionary": [n for n in schema.names if n in few],
        "write_statistics": [n for n in schema.names if n not in text],
    }


def new_stage(workdir: str, batch_id: str) -> Path:
    """An empty staging folder for the batch (a crashed attempt's leftovers removed)."""
    stage = Path(workdir) / batch_id
    shutil.rmtree(stage, ignore_errors=True)
    (stage / "clean").mkdir(parents=True)
    (stage / "quarantine").mkdir(parents=True)
    return stage


class ChunkStream:
    """One pass over the file's chunks: validate, stage clean/quarantine, yield raw record batches.

    With no gate (the file's columns were rejected) the chunks only go to raw.
    Errors raised while reading are kept in `error`, because the Delta writer wraps them.
    """

    def __init__(
        self,
        src,
        contract: Contract,
        cfg: LifecycleConfig,
        gate,
        stage: Path,
        batch_id: str,
        at: datetime,
        chunks: Prefetch | None = None,
    ):
        """`chunks`: the file's chunks already being read (`Prefetch` of `sources.read_tables`); else read here."""
        self.src, self.contract, self.cfg, self.gate = src, contract, cfg, gate
        self.chunks = chunks
        self.stage, self.batch_id, self.at = stage, batch_id, at
        self.rows = 0
        self.error: BaseException | None = None
        self._done = False

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        if self._done:
            return
        self._done = True
        try:
            yield from self._batches()
        except BaseException as exc:
            self.error = exc
            raise

    def drain(self) -> None:
        for _ in self:
            pass
        if self.error is not None:
            raise self.error

    def _batches(self) -> Iterator[pa.RecordBatch]:
        contract, names = self.contract, self.contract.column_names
        qschema, cschema = quarantine_schema(contract), clean_schema(contract)
        chunks = (
            self.chunks
            if self.chunks is not None
            else read_ahead(sources.read_tables(self.src, names, self.cfg.data.chunk_rows))
        )
        for i, table in enumerate(chunks):
            offset = self.rows
            raw = _raw_table(table, contract, self.src.uri, self.batch_id, self.at, offset)
            # raw/D holds every row whatever its verdict: the writer encodes the chunk while the gate judges it
            # (an error later in the stream still aborts the whole commit)
            yield from raw.to_batches()
            if self.gate is not None:
                verdict = self.gate.validate_chunk(raw.select(names), row_offset=offset)
                if len(verdict.clean):
                    clean = verdict.clean
                    clean["_batch_id"] = self.batch_id
                    clean["_ingested_at"] = pd.Timestamp(self.at)
                    staged = pa.Table.from_pandas(clean[cschema.names], schema=cschema, preserve_index=False)
                    bad = verdict.quarantine["_row"].to_numpy(dtype=np.int64)
                    rows = np.arange(offset, offset + table.num_rows, dtype=np.int64)
                    if len(bad):  # the clean rows are the chunk's other rows, in order
                        rows = rows[~np.isin(rows, bad)]
                    assert len(rows) == staged.num_rows, "every row is clean or quarantined, once"
                    _write_stage(
                        staged.append_column("_row", pa.array(rows)),
                        self.stage / "clean" / f"{i:06d}.parquet",
                        contract,
                    )
                if len(verdict.quarantine):
                    q = verdict.quarantine
                    qraw = raw.take(pa.array(q["_row"].to_numpy(dtype=np.int64) - offset))
                    reasons = [r if isinstance(r, str) else "; ".join(r) for r in q["_reasons"]]
                    qraw = qraw.append_column("_reasons", pa.array(reasons, pa.string()))
                    _write_stage(
                        qraw.select(qschema.names).cast(qschema),
                        self.stage / "quarantine" / f"{i:06d}.parquet",
                        contract,
                    )
            self.rows += table.num_rows


def _raw_table(
    table: pa.Table, contract: Contract, source: str, batch_id: str, at: datetime, offset: int
) -> pa.Table:
    """The chunk as raw/D stores it: the contract's columns as received (null when absent), unexpected
    columns as JSON in `_extra`, and the batch metadata."""
    n = table.num_rows
    schema = raw_schema(contract)
    present = set(table.column_names)
    arrays = [table[name] if name in present else pa.nulls(n, pa.string()) for name in contract.column_names]
    extra = [c for c in table.column_names if c not in contract.columns]
    if extra:
        import orjson

        rows = table.select(extra).to_pylist()
        arrays.append(pa.array([orjson.dumps(r).decode() for r in rows], pa.string()))
    else:
        arrays.append(pa.nulls(n, pa.string()))
    arrays += [  # the same value on every row: repeated in Arrow, not built from Python objects
        pa.repeat(pa.scalar(batch_id, pa.string()), n),
        pa.repeat(pa.scalar(source, pa.string()), n),
        pa.repeat(pa.scalar(at, pa.timestamp("us", tz="UTC")), n),
        pa.array(np.arange(offset, offset + n, dtype=np.int64)),
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


def _write_stage(table: pa.Table, path: Path, contract: Contract) -> None:
    # read once, a moment later: speed over size (lz4, a dictionary only where values are few, no statistics)
    pq.write_table(table, path, **staging_options(contract))


def staged_reader(
    folder: Path, schema: pa.Schema, *, drop_rows: np.ndarray | None = None, on_batch=None
) -> pa.RecordBatchReader:
    """The staged Parquet files of one folder, in chunk order, as one stream for a Delta commit (`schema`'s
    columns only). `drop_rows`: batch row numbers (`_row`) left out. `on_batch()` runs after each batch is
    handed over (a kill point: the commit's files are being written, the commit is not made)."""
    files = sorted(folder.glob("*.parquet"))
    names = schema.names
    drop = pa.array(drop_rows, pa.int64()) if drop_rows is not None and len(drop_rows) else None

    def decoded() -> Iterator[pa.RecordBatch]:
        for f in files:
            for rb in pq.ParquetFile(f).iter_batches(batch_size=65536):
                if drop is not None:
                    rb = rb.filter(pc.invert(pc.is_in(rb.column("_row"), drop)))
                yield pa.RecordBatch.from_arrays([rb.column(n) for n in names], schema=schema)

    def gen() -> Iterator[pa.RecordBatch]:
        # the staged files are decoded on a thread while the commit encodes the batch before (1M demo rows
        # of clean/D: the commit 1.3 -> 0.8 s); one batch ahead at most
        for rb in read_ahead(decoded()):
            yield rb
            if on_batch is not None:
                on_batch()

    return pa.RecordBatchReader.from_batches(schema, gen())


def staged_ids(folder: Path, id_column: str) -> Iterator[pa.Table]:
    """(id, `_row`) of each staged file, one file at a time."""
    for f in sorted(folder.glob("*.parquet")):
        yield pq.read_table(f, columns=[id_column, "_row"])
