"""Ingest: land a source in raw/D, pass it through the validation gate, split it into clean/D and
quarantine/D, and record the batch in the batch ledger (batches/D).

One file is one batch. `batch_id` = hash(file content + contract hash), so the same file under the same
contract is the same batch: ingesting it again is a no-op reported as `duplicate_batch: true`.

Crash safety: raw, quarantine, clean and the ledger are each written in ONE Delta commit carrying a Delta app
transaction (`loopline-ingest-<batch_id>`); a retry skips the commits that already happened, so a crash
half-way never duplicates rows. The ledger row is written last: it is what makes a batch "done".
Memory: chunks stream from the file through the gate straight into the raw commit; clean and quarantine
chunks are staged as local Parquet files and streamed into their commits once the whole batch has passed.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from loopline.config import LifecycleConfig
from loopline.data.contracts import Contract
from loopline.errors import DataQualityError, SourceError
from loopline.storage import delta, sources
from loopline.storage.lake import Lake

log = logging.getLogger(__name__)

META_COLUMNS = ("_batch_id", "_source", "_ingested_at", "_row")


@dataclass
class BatchResult:
    dataset: str
    batch_id: str
    source: str
    rows_in: int = 0
    rows_clean: int = 0
    rows_quarantined: int = 0
    duplicate_batch: bool = False
    accepted: bool = True
    reason: str | None = None
    raw_version: int | None = None
    clean_version: int | None = None
    quarantine_version: int | None = None
    per_expectation: list[dict] = field(default_factory=list)
    data_docs_path: str | None = None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def unreadable_result(uri: str, contract: Contract, exc: SourceError) -> BatchResult:
    return BatchResult(dataset=contract.dataset, batch_id="", source=uri, accepted=False, reason=str(exc))


def batch_id_for(content_sha256: str, contract: Contract) -> str:
    return hashlib.sha256(f"{content_sha256}:{contract.hash}".encode()).hexdigest()[:20]


def raw_schema(contract: Contract) -> pa.Schema:
    fields = [pa.field(c, pa.string()) for c in contract.column_names]
    fields += [pa.field("_extra", pa.string())]
    fields += [
        pa.field("_batch_id", pa.string()),
        pa.field("_source", pa.string()),
        pa.field("_ingested_at", pa.timestamp("us", tz="UTC")),
        pa.field("_row", pa.int64()),
    ]
    return pa.schema(fields)


def quarantine_schema(contract: Contract) -> pa.Schema:
    return raw_schema(contract).append(pa.field("_reasons", pa.string()))


def clean_schema(contract: Contract) -> pa.Schema:
    arrow_types = {
        "int": pa.int64(),
        "float": pa.float64(),
        "bool": pa.bool_(),
        "string": pa.string(),
        "category": pa.string(),
        "timestamp": pa.timestamp("us"),
    }
    fields = [pa.field(name, arrow_types[spec.type]) for name, spec in contract.columns.items()]
    fields += [pa.field("_batch_id", pa.string()), pa.field("_ingested_at", pa.timestamp("us", tz="UTC"))]
    return pa.schema(fields)


def ledger_schema() -> pa.Schema:
    return pa.schema(
        [
            ("batch_id", pa.string()),
            ("source", pa.string()),
            ("status", pa.string()),
            ("rows_in", pa.int64()),
            ("rows_clean", pa.int64()),
            ("rows_quarantined", pa.int64()),
            ("contract_hash", pa.string()),
            ("ingested_at", pa.timestamp("us", tz="UTC")),
        ]
    )


def ingest_source(source: str, contract: Contract, lake: Lake, cfg: LifecycleConfig) -> list[BatchResult]:
    """Ingest every file a source names (one batch each). Rejections are returned, not raised."""
    workdir = sources.scratch_dir()
    try:
        files = sources.list_source(source, lake)
        results = []
        for uri in files:
            try:
                results.append(ingest_file(uri, contract, lake, cfg, workdir=workdir))
            except SourceError as exc:
                if len(files) == 1:
                    raise
                # in a folder, one unreadable file is that file's rejection; the others still land
                results.append(unreadable_result(uri, contract, exc))
        return results
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def ingest_file(
    uri: str, contract: Contract, lake: Lake, cfg: LifecycleConfig, *, workdir: str
) -> BatchResult:
    """Ingest one file as one batch. Returns the result; a rejected batch has accepted=False.

    Raises SourceError when the file cannot be read at all (exit 2).
    """
    src = sources.fetch(uri, lake, workdir)
    batch_id = batch_id_for(sources.fingerprint(src.local_path), contract)
    result = BatchResult(dataset=contract.dataset, batch_id=batch_id, source=src.uri)
    ledger_uri = lake.uri("batches", contract.dataset)
    previous = _ledger_entry(lake, ledger_uri, batch_id)
    if previous is not None and previous["status"] == "accepted":
        result.duplicate_batch = True
        result.rows_in = int(previous["rows_in"])
        result.rows_clean = int(previous["rows_clean"])
        result.rows_quarantined = int(previous["rows_quarantined"])
        _fill_versions(result, lake, contract.dataset)
        return result

    columns = sources.read_header(src)
    from loopline.data.validation.gate import Gate  # the gate imports great_expectations lazily

    gate = Gate(
        contract,
        existing_ids=_existing_ids(lake, contract, exclude_batch=batch_id),
        cfg=cfg.validation,
        data_docs_dir=str(Path(cfg.home) / "data_docs") if cfg.validation.data_docs else None,
        batch_id=batch_id,
    )
    app_id = f"loopline-ingest-{batch_id}"
    stage = Path(workdir) / batch_id
    shutil.rmtree(stage, ignore_errors=True)
    (stage / "clean").mkdir(parents=True)
    (stage / "quarantine").mkdir(parents=True)
    ingested_at = datetime.now(UTC)
    try:
        gate.check_columns(columns, file=src.uri)
        column_error = None
    except DataQualityError as exc:
        column_error = exc

    raw_uri = lake.table_uri("raw", contract.dataset)
    stream = _ChunkStream(
        src, contract, cfg, gate if column_error is None else None, stage, batch_id, ingested_at
    )
    if delta.is_committed(delta.open_table(lake, raw_uri), app_id):
        stream.drain()  # a retry whose raw commit already happened: validate the file, write nothing to raw
    else:
        _write_pipelined(
            lake, raw_uri, raw_schema(contract), stream, app_id, {"batch_id": batch_id, "source": src.uri}
        )

    if column_error is not None:
        result.accepted = False
        result.reason = str(column_error)
        result.rows_in = stream.rows
        _record(lake, ledger_uri, result, contract, "rejected", ingested_at)
        _fill_versions(result, lake, contract.dataset)
        return result

    verdict = gate.finish()
    result.rows_in, result.rows_clean = verdict.rows_in, verdict.rows_clean
    result.rows_quarantined = verdict.rows_quarantined
    result.per_expectation = verdict.per_expectation
    result.data_docs_path = verdict.data_docs_path
    if (
        result.rows_in != result.rows_clean + result.rows_quarantined
    ):  # the gate's invariant, checked again here
        raise AssertionError(f"batch {batch_id}: rows_in != rows_clean + rows_quarantined")
    if not verdict.accepted:
        result.accepted = False
        result.reason = verdict.reason
        _record(lake, ledger_uri, result, contract, "rejected", ingested_at)
        _fill_versions(result, lake, contract.dataset)
        return result

    meta = {"batch_id": batch_id, "source": src.uri}
    delta.append_once(
        lake,
        lake.table_uri("quarantine", contract.dataset),
        _staged_reader(stage / "quarantine", quarantine_schema(contract)),
        app_id=app_id,
        metadata=meta,
    )
    delta.append_once(
        lake,
        lake.table_uri("clean", contract.dataset),
        _staged_reader(stage / "clean", clean_schema(contract)),
        app_id=app_id,
        metadata=meta,
    )
    _record(lake, ledger_uri, result, contract, "accepted", ingested_at)
    _fill_versions(result, lake, contract.dataset)
    shutil.rmtree(stage, ignore_errors=True)
    return result


_DONE = object()


def _write_pipelined(lake: Lake, uri: str, schema: pa.Schema, stream, app_id: str, metadata: dict) -> None:
    """Stream `stream`'s record batches into one Delta commit, with the writer on its own thread.

    Reading + validating chunk i+1 (Python) overlaps with encoding chunk i to Parquet (Rust, no GIL);
    a queue of two chunks bounds memory. An error on either side aborts the commit: nothing is written.
    """
    import queue
    import threading

    pipe: queue.Queue = queue.Queue(maxsize=4)
    failure: list[BaseException] = []

    def batches() -> Iterator[pa.RecordBatch]:
        while (item := pipe.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item

    def write() -> None:
        try:
            delta.append_once(
                lake,
                uri,
                pa.RecordBatchReader.from_batches(schema, batches()),
                app_id=app_id,
                metadata=metadata,
            )
        except BaseException as exc:  # reported to the reading side below
            failure.append(exc)

    writer = threading.Thread(target=write, name="loopline-raw-writer", daemon=True)
    writer.start()
    try:
        for batch in stream:
            while True:  # never block forever on a writer that died
                if failure:
                    raise failure[0]
                try:
                    pipe.put(batch, timeout=0.5)
                    break
                except queue.Full:
                    continue
        pipe.put(_DONE)
    except BaseException as exc:
        if writer.is_alive():
            pipe.put(RuntimeError(f"aborted: {exc}"))
        writer.join()
        raise
    writer.join()
    if failure:
        raise failure[0]


class _ChunkStream:
    """One pass over the file's chunks: validate, stage clean/quarantine, yield raw record batches.

    Errors raised while reading are kept in `error`, because the Delta writer wraps them.
    """

    def __init__(
        self, src, contract: Contract, cfg: LifecycleConfig, gate, stage: Path, batch_id: str, at: datetime
    ):
        self.src, self.contract, self.cfg, self.gate = src, contract, cfg, gate
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
        for i, table in enumerate(sources.read_tables(self.src, names, self.cfg.data.chunk_rows)):
            offset = self.rows
            raw = _raw_table(table, contract, self.src.uri, self.batch_id, self.at, offset)
            if self.gate is not None:
                verdict = self.gate.validate_chunk(raw.select(names).to_pandas(), row_offset=offset)
                if len(verdict.clean):
                    clean = verdict.clean
                    clean["_batch_id"] = self.batch_id
                    clean["_ingested_at"] = pd.Timestamp(self.at)
                    _write_stage(
                        pa.Table.from_pandas(clean[cschema.names], schema=cschema, preserve_index=False),
                        self.stage / "clean" / f"{i:06d}.parquet",
                    )
                if len(verdict.quarantine):
                    q = verdict.quarantine
                    qraw = raw.take(pa.array(q["_row"].to_numpy(dtype=np.int64) - offset))
                    reasons = [r if isinstance(r, str) else "; ".join(r) for r in q["_reasons"]]
                    qraw = qraw.append_column("_reasons", pa.array(reasons, pa.string()))
                    _write_stage(
                        qraw.select(qschema.names).cast(qschema),
                        self.stage / "quarantine" / f"{i:06d}.parquet",
                    )
            self.rows += table.num_rows
            yield from raw.to_batches()


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
    arrays += [
        pa.array(np.full(n, batch_id, dtype=object), pa.string()),
        pa.array(np.full(n, source, dtype=object), pa.string()),
        pa.array(np.full(n, np.datetime64(at.replace(tzinfo=None), "us")), pa.timestamp("us", tz="UTC")),
        pa.array(np.arange(offset, offset + n, dtype=np.int64)),
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


def _write_stage(table: pa.Table, path: Path) -> None:
    # lz4: staging files are read once, a moment later; speed over size
    pq.write_table(table, path, compression="lz4")


def _staged_reader(folder: Path, schema: pa.Schema) -> pa.RecordBatchReader:
    files = sorted(folder.glob("*.parquet"))

    def gen() -> Iterator[pa.RecordBatch]:
        for f in files:
            yield from pq.ParquetFile(f).iter_batches(batch_size=65536)

    return pa.RecordBatchReader.from_batches(schema, gen())


def _existing_ids(lake: Lake, contract: Contract, *, exclude_batch: str) -> np.ndarray:
    """Ids already in clean/D (not counting this batch, in case a crashed attempt wrote them)."""
    table = delta.read_column(lake, lake.table_uri("clean", contract.dataset), [contract.id, "_batch_id"])
    if table is None or table.num_rows == 0:
        return np.array([], dtype=np.int64 if contract.columns[contract.id].type == "int" else object)
    import pyarrow.compute as pc

    table = table.filter(pc.not_equal(table["_batch_id"], exclude_batch))
    return table[contract.id].to_numpy(zero_copy_only=False)


def _ledger_entry(lake: Lake, uri: str, batch_id: str) -> dict | None:
    table = delta.open_table(lake, uri)
    if table is None:
        return None
    import pyarrow.compute as pc

    rows = table.to_pyarrow_dataset().to_table(filter=pc.field("batch_id") == batch_id).to_pylist()
    accepted = [r for r in rows if r["status"] == "accepted"]
    return (accepted or rows or [None])[-1]


def _record(lake: Lake, uri: str, result: BatchResult, contract: Contract, status: str, at: datetime) -> None:
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


def _fill_versions(result: BatchResult, lake: Lake, dataset: str) -> None:
    result.raw_version = delta.table_version(lake, lake.table_uri("raw", dataset))
    result.clean_version = delta.table_version(lake, lake.table_uri("clean", dataset))
    result.quarantine_version = delta.table_version(lake, lake.table_uri("quarantine", dataset))


def summarise(results: list[BatchResult]) -> dict:
    """The CLI's JSON: the single batch's fields, or totals plus `batches` for a folder."""
    if not results:
        raise SourceError("nothing to ingest", file="(empty source)")
    if len(results) == 1:
        return _public(results[0])
    last = results[-1]
    return {
        "dataset": last.dataset,
        "batch_id": [r.batch_id for r in results],
        "rows_in": sum(r.rows_in for r in results),
        "rows_clean": sum(r.rows_clean for r in results),
        "rows_quarantined": sum(r.rows_quarantined for r in results),
        "duplicate_batch": all(r.duplicate_batch for r in results),
        "accepted": all(r.accepted for r in results),
        "raw_version": last.raw_version,
        "clean_version": last.clean_version,
        "quarantine_version": last.quarantine_version,
        "batches": [_public(r) for r in results],
    }


def summarise_dicts(results: list[dict]) -> dict:
    """`summarise` over results that crossed a task boundary as dicts."""
    return summarise([BatchResult(**r) for r in results])


def _public(r: BatchResult) -> dict:
    keys = (
        "dataset",
        "batch_id",
        "source",
        "rows_in",
        "rows_clean",
        "rows_quarantined",
        "duplicate_batch",
        "accepted",
        "reason",
        "raw_version",
        "clean_version",
        "quarantine_version",
        "data_docs_path",
    )
    return {k: getattr(r, k) for k in keys}
