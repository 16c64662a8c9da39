"""Ingest: land a source in raw/D, pass it through the validation gate, split it into clean/D and
quarantine/D, and record the batch in the batch ledger (batches/D).

One file is one batch. `batch_id` = hash(file content + contract hash), so the same file under the same
contract is the same batch: ingesting it again is a no-op reported as `duplicate_batch: true`.

Crash safety: raw, quarantine, clean and the ledger are each written in ONE Delta commit carrying a Delta app
transaction (`loopline-ingest-<batch_id>`); a retry skips the commits that already happened, so a crash
half-way never duplicates rows. The ledger row is written last: it is what makes a batch "done".
Memory: chunks stream from the file through the gate straight into the raw commit; clean and quarantine
chunks are staged as local Parquet files and streamed into their commits once the whole batch has passed.
A column type change the user allowed (`--allow-incompatible`) rewrites clean/D in the batch's clean commit,
old rows cast to the new type (Delta would otherwise cast the new values to the old type: 2.5 -> 2); rows
that cannot take the new type refuse the batch before any commit.

Here: the orchestration of one batch (`ingest_file`), of a source (`ingest_source`, one `ingest_file` per
file; the ingest flow runs the same step once per file as its own task) and the CLI's summary. The table
schemas are in `schemas`, the ledger in `ledger`, the pipelined raw commit and the staging in `raw_writer`.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
from deltalake import DeltaTable

from loopline.config import LifecycleConfig
from loopline.data import ledger
from loopline.data.contract_registry import register_contract
from loopline.data.contracts import Contract
from loopline.data.raw_writer import ChunkStream, new_stage, staged_reader, write_pipelined
from loopline.data.schemas import clean_schema, quarantine_schema, raw_schema
from loopline.errors import ContractError, DataQualityError, SourceError
from loopline.storage import delta, sources
from loopline.storage.lake import Lake

log = logging.getLogger(__name__)


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
    contract_version: int | None = None  # the dataset's contract version in the lake that judged the batch

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def unreadable_result(uri: str, contract: Contract, exc: SourceError) -> BatchResult:
    return BatchResult(dataset=contract.dataset, batch_id="", source=uri, accepted=False, reason=str(exc))


def batch_id_for(content_sha256: str, contract: Contract) -> str:
    return hashlib.sha256(f"{content_sha256}:{contract.hash}".encode()).hexdigest()[:20]


def ingest_source(source: str, contract: Contract, lake: Lake, cfg: LifecycleConfig) -> list[BatchResult]:
    """Ingest every file a source names (one batch each, in order). Rejections are returned, not raised."""
    workdir = sources.scratch_dir()
    try:
        files = sources.list_source(source, lake)
        in_folder = len(files) > 1
        return [ingest_file(uri, contract, lake, cfg, workdir=workdir, in_folder=in_folder) for uri in files]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def ingest_file(
    uri: str,
    contract: Contract,
    lake: Lake,
    cfg: LifecycleConfig,
    *,
    workdir: str | None = None,
    in_folder: bool = False,
) -> BatchResult:
    """Ingest one file as one batch: the step `ingest_source` (and the ingest flow's task) runs per file.
    Returns the result; a rejected batch has accepted=False.

    Raises SourceError when the file cannot be read at all (exit 2); `in_folder`, where one unreadable file
    is that file's rejection and the others still land, returns it as a rejected result instead.
    Scratch files go under `workdir`, or under a scratch folder of its own that is removed afterwards.
    """
    # the lake remembers the contract (first ingest) or refuses an incompatible change before any commit
    if cfg.data.allow_incompatible_contract:
        check_retype(lake, contract)
    registered = register_contract(lake, contract, allow_incompatible=cfg.data.allow_incompatible_contract)
    own_workdir = workdir is None
    if workdir is None:
        workdir = sources.scratch_dir()
    try:
        result = _ingest_batch(uri, contract, lake, cfg, workdir)
        result.contract_version = registered.version
        return result
    except SourceError as exc:
        if not in_folder:
            raise
        return unreadable_result(uri, contract, exc)
    finally:
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def _ingest_batch(
    uri: str, contract: Contract, lake: Lake, cfg: LifecycleConfig, workdir: str
) -> BatchResult:
    src = sources.fetch(uri, lake, workdir)
    batch_id = batch_id_for(sources.fingerprint(src.local_path), contract)
    result = BatchResult(dataset=contract.dataset, batch_id=batch_id, source=src.uri)
    ledger_uri = ledger.ledger_uri(lake, contract.dataset)
    previous = ledger.find_entry(lake, ledger_uri, batch_id)
    if previous is not None and previous["status"] == "accepted":
        result.duplicate_batch = True
        result.rows_in = int(previous["rows_in"])
        result.rows_clean = int(previous["rows_clean"])
        result.rows_quarantined = int(previous["rows_quarantined"])
        ledger.fill_versions(result, lake, contract.dataset)
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
    stage = new_stage(workdir, batch_id)
    ingested_at = datetime.now(UTC)
    try:
        gate.check_columns(columns, file=src.uri)
        column_error = None
    except DataQualityError as exc:
        column_error = exc

    raw_uri = lake.table_uri("raw", contract.dataset)
    stream = ChunkStream(
        src, contract, cfg, gate if column_error is None else None, stage, batch_id, ingested_at
    )
    if delta.is_committed(delta.open_table(lake, raw_uri), app_id):
        stream.drain()  # a retry whose raw commit already happened: validate the file, write nothing to raw
    else:
        write_pipelined(
            lake, raw_uri, raw_schema(contract), stream, app_id, {"batch_id": batch_id, "source": src.uri}
        )

    if column_error is not None:
        result.accepted = False
        result.reason = str(column_error)
        result.rows_in = stream.rows
        ledger.record(lake, ledger_uri, result, contract, "rejected", ingested_at)
        ledger.fill_versions(result, lake, contract.dataset)
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
        ledger.record(lake, ledger_uri, result, contract, "rejected", ingested_at)
        ledger.fill_versions(result, lake, contract.dataset)
        return result

    meta = {"batch_id": batch_id, "source": src.uri}
    delta.append_once(
        lake,
        lake.table_uri("quarantine", contract.dataset),
        staged_reader(stage / "quarantine", quarantine_schema(contract)),
        app_id=app_id,
        metadata=meta,
    )
    clean_uri = lake.table_uri("clean", contract.dataset)
    clean_rows = staged_reader(stage / "clean", clean_schema(contract))
    clean = delta.open_table(lake, clean_uri)  # one snapshot: what a retype reads is what the commit checks
    retyped = retyped_columns(lake, contract, clean)
    delta.append_once(
        lake,
        clean_uri,
        _retyped_reader(clean, retyped, clean_rows) if retyped else clean_rows,
        app_id=app_id,
        metadata={**meta, "retyped": sorted(retyped)} if retyped else meta,
        mode="overwrite" if retyped else "append",
        table=clean,
    )
    ledger.record(lake, ledger_uri, result, contract, "accepted", ingested_at)
    ledger.fill_versions(result, lake, contract.dataset)
    shutil.rmtree(stage, ignore_errors=True)
    return result


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


def _retyped_reader(
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


def _existing_ids(lake: Lake, contract: Contract, *, exclude_batch: str) -> np.ndarray:
    """Ids already in clean/D (not counting this batch, in case a crashed attempt wrote them)."""
    table = delta.read_column(lake, lake.table_uri("clean", contract.dataset), [contract.id, "_batch_id"])
    if table is None or table.num_rows == 0:
        return np.array([], dtype=np.int64 if contract.columns[contract.id].type == "int" else object)
    import pyarrow.compute as pc

    table = table.filter(pc.not_equal(table["_batch_id"], exclude_batch))
    return table[contract.id].to_numpy(zero_copy_only=False)


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
        "contract_version": last.contract_version,
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
        "contract_version",
    )
    return {k: getattr(r, k) for k in keys}
