"""Ingest of many files in parallel (`data.executor: dask`): the pure work of one file, done on any worker, and
the plan that keeps the parallel result exactly the one-file-after-another result.

Workers never commit. Per file they `scan_file` (fingerprint -> batch id, and the file's ids) and then
`gate_file` (the validation gate, with raw, clean and quarantine rows staged as Parquet under the run's staging
folder). The one committer of the dataset (the flow process, loopline.data.staged_commit) commits the staged
batches in file order through the same exactly-once machinery as a local ingest (Delta app transactions,
the clean commit's re-check, the ledger row last).

Why the result is identical to the local executor's: the gate's verdict on file k depends on the rest of the
lake only through "which of k's ids does clean/D hold when k is judged" (`new_id`, and through it the in-batch
uniqueness claims). Locally that is the snapshot S0 the run started from plus the clean ids of the earlier
files of the run. The scans give every file's ids up front, so the plan (`GatePlan`) knows which earlier files
share ids with k; k is judged once those have been judged, against S0 (a pinned Delta version) plus exactly
their clean ids that k also holds (`run_ids`). Files that share no ids are judged at the same time. Before k is
committed, the committer recomputes that set from what the earlier files really committed (`truth`); when it
differs (a concurrent writer moved rows, a batch turned out a duplicate) k is judged again: exact, not hopeful.

Pure and re-runnable: a worker's output depends only on its inputs (the ingest time is one of them), and every
attempt writes into a folder of its own (`attempt_dir`), so Dask re-running a task whose worker died
(prefect#15442), or running it twice, never touches the files a committer is reading.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from loopline.config import LifecycleConfig
from loopline.data.allocator import use_data_plane_allocator
from loopline.data.contracts import Contract
from loopline.data.ingest import batch_id_for
from loopline.data.raw_writer import ChunkStream, new_stage
from loopline.data.schemas import raw_schema
from loopline.data.validation.coerce import coerce_column
from loopline.data.validation.ids import TableIds, ValueSet
from loopline.errors import DataQualityError, SourceError
from loopline.faults import kill_point
from loopline.storage import delta, sources
from loopline.storage.lake import Lake, is_s3_uri, split_s3_uri

FAIL_ENV = "LOOPLINE_FAIL_AT"  # a test's injected fault: `ingest.validate:<file name>` raises there
KINDS = ("raw", "clean", "quarantine")


@dataclass
class FileScan:
    uri: str
    batch_id: str = ""
    ids: np.ndarray | None = None  # the file's distinct ids, typed as the gate types them (nulls left out)
    unreadable: str | None = None  # the SourceError that makes the file unreadable as a whole
    error: str | None = None  # anything else that went wrong scanning it: the file fails, named


@dataclass
class StagedBatch:
    """What a worker hands the committer: where the batch's rows are staged and the gate's verdict."""

    uri: str
    source: str  # as recorded in `_source`
    batch_id: str
    stage: str  # the attempt's folder (local path or s3:// URI) with raw/, clean/, quarantine/
    ingested_at: datetime
    snapshot_version: int | None  # clean/D's version the gate read
    run_ids: np.ndarray  # the ids of earlier files of the run the gate counted as in clean/D
    staged_rows: dict[str, int] = field(default_factory=dict)  # kind -> rows in its staged files
    column_error: str | None = None
    rows_in: int = 0
    rows_clean: int = 0
    rows_quarantined: int = 0
    accepted: bool = True
    reason: str | None = None
    per_expectation: list[dict] = field(default_factory=list)
    data_docs_path: str | None = None
    quarantine_max_fraction: float = 0.0
    clean_ids: np.ndarray | None = None  # ids of the staged clean rows, when later files share ids with it


def fail_point(name: str, uri: str) -> None:
    """An injected failure for tests (as loopline.faults.kill_point is a kill): raises when FAIL_ENV names
    this point and the file's name."""
    if os.environ.get(FAIL_ENV) == f"{name}:{Path(uri).name}":
        raise RuntimeError(f"injected failure at {name} for {uri}")


# -- worker side ---------------------------------------------------------------------------------------
def scan_file(uri: str, contract: Contract, lake: Lake, cfg: LifecycleConfig) -> FileScan:
    """Fingerprint one file (its batch id) and read its ids. An unreadable file is a result, not an error."""
    workdir = sources.scratch_dir()
    try:
        src = sources.fetch(uri, lake, workdir)
        batch_id = batch_id_for(sources.fingerprint(src.local_path), contract)
        columns = sources.read_header(src)
        ids = _read_ids(src, contract, cfg) if contract.id in columns else _no_ids(contract)
        return FileScan(uri=uri, batch_id=batch_id, ids=ids)
    except SourceError as exc:
        return FileScan(uri=uri, unreadable=str(exc))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def scan_files(uris: list[str], contract: Contract, lake: Lake, cfg: LifecycleConfig) -> list[FileScan]:
    """`scan_file` for each of `uris`; an unexpected error fails that file only (`error`)."""
    out = []
    for uri in uris:
        try:
            fail_point("ingest.scan", uri)
            out.append(scan_file(uri, contract, lake, cfg))
        except Exception as exc:  # reported with the file's name by the committer
            out.append(FileScan(uri=uri, error=f"{type(exc).__name__}: {exc}"))
    return out


def _read_ids(src: sources.SourceFile, contract: Contract, cfg: LifecycleConfig) -> np.ndarray:
    spec = contract.columns[contract.id]
    parts = []
    for table in _id_tables(src, contract, cfg.data.chunk_rows):
        typed, _ = coerce_column(table.column(contract.id).to_pandas(), spec)
        parts.append(plain_ids(typed[typed.notna()], contract))
    return np.unique(np.concatenate(parts)) if parts else _no_ids(contract)


def _id_tables(src: sources.SourceFile, contract: Contract, chunk_rows: int):
    """The id column of the file in chunks, as text exactly as the gate receives it (CSV: only that column)."""
    if src.fmt != "csv":
        for table in sources.read_tables(src, contract.column_names, chunk_rows):
            yield table.select([contract.id])
        return
    from pyarrow import csv

    convert = csv.ConvertOptions(
        column_types={contract.id: pa.string()},
        include_columns=[contract.id],
        strings_can_be_null=True,
        null_values=[""],
        quoted_strings_can_be_null=False,
    )
    read = csv.ReadOptions(block_size=max(1 << 20, chunk_rows * 64))
    try:
        for batch in csv.open_csv(src.local_path, read_options=read, convert_options=convert):
            yield pa.Table.from_batches([batch])
    except pa.ArrowInvalid as exc:
        raise SourceError(f"cannot parse as CSV: {exc}", file=src.uri) from exc


def plain_ids(values: pd.Series, contract: Contract) -> np.ndarray:
    """Typed, non-null ids as the gate compares them (loopline.data.validation.gate)."""
    from loopline.data.validation.gate import _id_dtype, _plain

    return np.asarray(_plain(values), dtype=_id_dtype(contract, contract.id))


def _no_ids(contract: Contract) -> np.ndarray:
    from loopline.data.validation.gate import _id_dtype

    return np.empty(0, dtype=_id_dtype(contract, contract.id))


class KnownIds:
    """The ids the gate of one file counts as already in clean/D: the run's snapshot of clean/D (less the
    batch's own rows, as locally) plus `run_ids`, the clean ids of earlier files of the run it shares."""

    def __init__(self, snapshot: TableIds, run_ids: np.ndarray):
        self.snapshot = snapshot
        self.run = ValueSet(run_ids, dtype=run_ids.dtype)

    def __bool__(self) -> bool:
        return bool(self.snapshot) or len(self.run) > 0

    def contains(self, values) -> np.ndarray:
        found = self.run.contains(values) if len(self.run) else np.zeros(len(values), dtype=bool)
        if self.snapshot:
            found |= self.snapshot.contains(values)
        return found


def attempt_dir(stage_root: str, batch_id: str) -> str:
    """A folder of its own for one attempt at one file: a re-run never writes where a committer reads."""
    return f"{stage_root.rstrip('/')}/{batch_id}-{uuid.uuid4().hex[:12]}"


def gate_file(
    uri: str,
    contract: Contract,
    lake: Lake,
    cfg: LifecycleConfig,
    *,
    batch_id: str,
    stage_root: str,
    snapshot_version: int | None,
    run_ids: np.ndarray,
    ingested_at: datetime,
    want_clean_ids: bool,
) -> StagedBatch:
    """Validate one file and stage its rows (raw/, clean/, quarantine/ Parquet) for the committer.
    Raises SourceError when the file cannot be read (or changed since its scan)."""
    use_data_plane_allocator()
    fail_point("ingest.validate", uri)
    workdir = sources.scratch_dir()
    target = attempt_dir(stage_root, batch_id)
    local = Path(workdir) / "stage" if is_s3_uri(target) else Path(target)
    try:
        src = sources.fetch(uri, lake, workdir)
        if batch_id_for(sources.fingerprint(src.local_path), contract) != batch_id:
            raise SourceError("the file changed while it was being ingested; ingest it again", file=uri)
        columns = sources.read_header(src)
        from loopline.data.validation.gate import Gate  # imports great_expectations lazily

        clean = (
            delta.open_table(lake, lake.table_uri("clean", contract.dataset), snapshot_version)
            if snapshot_version is not None
            else None
        )
        known = KnownIds(TableIds(clean, contract.id, exclude_batch=batch_id), run_ids)
        docs = Path(cfg.home) / "data_docs" / "batches" / batch_id if cfg.validation.data_docs else None
        gate = Gate(contract, known, cfg.validation, str(docs) if docs else None, batch_id=batch_id)
        stage = new_stage(str(local.parent), local.name)
        (stage / "raw").mkdir()
        try:
            gate.check_columns(columns, file=src.uri)
            column_error = None
        except DataQualityError as exc:
            column_error = str(exc)
        stream = ChunkStream(
            src, contract, cfg, gate if column_error is None else None, stage, batch_id, ingested_at
        )
        with pq.ParquetWriter(stage / "raw" / "000000.parquet", raw_schema(contract), compression="lz4") as w:
            for rb in stream:
                w.write_batch(rb)
        kill_point("ingest.validate.staged")  # a worker killed mid-task: its attempt's folder half written
        staged = StagedBatch(
            uri=uri,
            source=src.uri,
            batch_id=batch_id,
            stage=target,
            ingested_at=ingested_at,
            snapshot_version=snapshot_version,
            run_ids=run_ids,
            staged_rows=staged_rows(stage),
            column_error=column_error,
            rows_in=stream.rows,
        )
        if column_error is None:
            verdict = gate.finish()
            staged.rows_in, staged.rows_clean = verdict.rows_in, verdict.rows_clean
            staged.rows_quarantined, staged.accepted = verdict.rows_quarantined, verdict.accepted
            staged.reason, staged.per_expectation = verdict.reason, verdict.per_expectation
            staged.data_docs_path = verdict.data_docs_path
            staged.quarantine_max_fraction = verdict.quarantine_max_fraction
            if want_clean_ids:
                staged.clean_ids = staged_clean_ids(stage, contract)
        if is_s3_uri(target):
            _upload(lake, stage, target)
        return staged
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def staged_rows(stage: Path) -> dict[str, int]:
    """Rows per kind in the staged Parquet files (footers only): what the committer checks it received."""
    return {
        kind: sum(pq.ParquetFile(f).metadata.num_rows for f in sorted((stage / kind).glob("*.parquet")))
        for kind in KINDS
    }


def staged_clean_ids(stage: Path, contract: Contract) -> np.ndarray:
    files = sorted((stage / "clean").glob("*.parquet"))
    if not files:
        return _no_ids(contract)
    column = pa.concat_tables([pq.read_table(f, columns=[contract.id]) for f in files])[contract.id]
    return np.unique(plain_ids(column.to_pandas(), contract))


def _upload(lake: Lake, stage: Path, target: str) -> None:
    bucket, key = split_s3_uri(target)
    client = lake.s3_client()
    for f in sorted(stage.rglob("*.parquet")):
        client.upload_file(str(f), bucket, f"{key}/{f.relative_to(stage).as_posix()}")


def localize(lake: Lake, stage: str, workdir: str) -> Path:
    """The staged batch as a local folder (downloaded when staged on S3)."""
    if not is_s3_uri(stage):
        return Path(stage)
    local = Path(workdir) / Path(stage).name
    prefix = stage.rstrip("/") + "/"
    for uri in lake.list(stage):
        path = local / uri[len(prefix) :]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(lake.get_bytes(uri))
    for kind in KINDS:
        (local / kind).mkdir(parents=True, exist_ok=True)
    return local


def stage_root(lake: Lake, run_key: str) -> str:
    """The run's staging folder in the lake (`_staging/ingest/<run>`), reachable from workers and committer."""
    return f"{lake.root.rstrip('/')}/_staging/ingest/{run_key}"


def remove_stale_stages(lake: Lake, max_age_s: float = 86_400.0) -> list[str]:
    """Remove the staging folders of runs that died (a killed committer leaves its run's folder): local lakes,
    folders older than `max_age_s`. On S3, a lifecycle rule on the `_staging/` prefix does this job."""
    import time

    if lake.is_s3:
        return []
    parent = Path(stage_root(lake, "x")).parent
    if not parent.is_dir():
        return []
    cutoff = time.time() - max_age_s
    stale = [p for p in parent.iterdir() if p.is_dir() and p.stat().st_mtime < cutoff]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return [str(p) for p in stale]


def remove_stage(lake: Lake, root: str) -> None:
    if is_s3_uri(root):
        for uri in lake.list(root):
            lake.delete(uri)
    else:
        shutil.rmtree(root, ignore_errors=True)
