"""Ingest: land a source in raw/D, pass it through the validation gate, split it into clean/D and
quarantine/D, and record the batch in the batch ledger (batches/D).

One file is one batch. `batch_id` = hash(file content + contract hash), so the same file under the same
contract is the same batch: ingesting it again is a no-op reported as `duplicate_batch: true`.

Crash safety: raw, clean, quarantine and the ledger are each written in ONE Delta commit carrying a Delta app
transaction (`loopline-ingest-<batch_id>`), in that order; a retry skips the commits that already happened, so
a crash half-way never duplicates rows. The ledger row is written last: it is what makes a batch "done".
Clean comes before quarantine because the clean commit decides the last rows quarantine gets: under concurrent
ingests it re-checks the batch's ids at commit time and moves the rows whose id another batch committed first
(loopline.data.clean_commit). A rerun after a kill between the two finds those rows again: its gate reads clean/D
with the other batches' ids in it (this batch's own committed rows do not count), so it quarantines exactly
what the first attempt moved, and the quarantine commit that follows holds the batch's whole remainder.
Concurrency: ids stay unique in clean/D under concurrent ingests into one dataset (first arrival wins; see
clean_commit), each batch's commits are exactly once (a concurrent ingest of the same file is a conflict whose
loser skips what the winner committed), and raw = clean + quarantine for every accepted batch. A commit that
loses the race to create a table reruns the batch (`retry_conflicts`): every step is idempotent.
Memory: chunks stream from the file through the gate straight into the raw commit; clean and quarantine
chunks are staged as local Parquet files and streamed into their commits once the whole batch has passed. The
gate looks up only each chunk's ids in clean/D (`TableIds`), never the whole id column.
Overlaps (bench/data_plane): the file's first chunk is decoded while the file is hashed; raw/D's writer encodes
each chunk while the gate judges it; the GX run overlaps raw/D's last files and commit; and, on a local lake,
clean/D's files are written from the staged rows during the GX run too, then committed as they are if the
verdict holds and no row moved (`clean_commit.prewrite_clean`; else they are removed and the commit writes its
own).
A column type change the user allowed (`--allow-incompatible`) rewrites clean/D in the batch's clean commit,
old rows cast to the new type (Delta would otherwise cast the new values to the old type: 2.5 -> 2); rows
that cannot take the new type refuse the batch before any commit.

Here: the orchestration of one batch (`ingest_file`), of a source (`ingest_source`, one `ingest_file` per
file; the ingest flow runs the same step once per file as its own task) and the CLI's summary. The table
schemas are in `schemas`, the ledger in `ledger`, the pipelined raw commit and the staging in `raw_writer`,
the commit sequence raw -> clean -> quarantine -> ledger (shared with the parallel path's committer) in
`batch_commit`, the clean commit (its re-check, the moved rows, the retype) in `clean_commit`, how the files
are encoded in `encoding`. Kill points (loopline.faults):
ingest.before_raw, .raw_writing, .after_raw, .before_clean, .clean_writing, .after_clean, .after_quarantine,
.after_ledger.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from loopline.config import LifecycleConfig
from loopline.data.allocator import use_data_plane_allocator
from loopline.data.batch_commit import Judged, app_id_for, commit_batch, duplicate_result
from loopline.data.clean_commit import check_retype, prewrite_clean
from loopline.data.contract_registry import register_contract
from loopline.data.contracts import Contract
from loopline.data.encoding import raw_properties
from loopline.data.prefetch import Prefetch
from loopline.data.raw_writer import ChunkStream, new_stage, raw_parquet_options, write_pipelined
from loopline.data.schemas import raw_schema
from loopline.data.validation.ids import TableIds
from loopline.errors import DataQualityError, SourceError
from loopline.storage import delta, sources
from loopline.storage.delta_files import PreWrite
from loopline.storage.lake import Lake

log = logging.getLogger(__name__)
RERUN_ATTEMPTS = 4  # reruns of a batch whose commit lost a race that cannot be retried in place


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
    event_emitted: bool | None = (
        None  # set where events are sent (tasks/): whether the API accepted its event
    )

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
    use_data_plane_allocator()
    # the lake remembers the contract (first ingest) or refuses an incompatible change before any commit
    if cfg.data.allow_incompatible_contract:
        check_retype(lake, contract)
    registered = register_contract(lake, contract, allow_incompatible=cfg.data.allow_incompatible_contract)
    own_workdir = workdir is None
    if workdir is None:
        workdir = sources.scratch_dir()
    try:
        result = delta.retry_conflicts(
            lambda: _ingest_batch(uri, contract, lake, cfg, workdir),
            f"ingest of {uri} into dataset {contract.dataset}",
            attempts=RERUN_ATTEMPTS,
        )
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
    # the first chunk is decoded while the file is hashed for its batch id (1M demo rows: 0.35 s no longer
    # in front of the stream); a re-ingest only wastes that one chunk's decoding, on the other core, and does
    # not wait for it (the reader holds no lake state: it ends after that chunk on its own)
    chunks = Prefetch(sources.read_tables(src, contract.column_names, cfg.data.chunk_rows))
    try:
        return _judge_and_commit(src, chunks, contract, lake, cfg, workdir)
    finally:
        chunks.close(wait=False)


def _judge_and_commit(
    src: sources.SourceFile,
    chunks: Prefetch,
    contract: Contract,
    lake: Lake,
    cfg: LifecycleConfig,
    workdir: str,
) -> BatchResult:
    batch_id = batch_id_for(sources.fingerprint(src.local_path), contract)
    duplicate = duplicate_result(lake, contract, batch_id, src.uri)
    if duplicate is not None:
        return duplicate
    result = BatchResult(dataset=contract.dataset, batch_id=batch_id, source=src.uri)

    columns = sources.read_header(src)
    from loopline.data.validation.gate import Gate  # the gate imports great_expectations lazily

    clean_uri = lake.table_uri("clean", contract.dataset)
    checked = TableIds(delta.open_table(lake, clean_uri), contract.id, exclude_batch=batch_id)
    gate = Gate(
        contract,
        existing_ids=checked,
        cfg=cfg.validation,
        data_docs_dir=str(Path(cfg.home) / "data_docs") if cfg.validation.data_docs else None,
        batch_id=batch_id,
    )
    stage = new_stage(workdir, batch_id)
    ingested_at = datetime.now(UTC)
    try:
        gate.check_columns(columns, file=src.uri)
        column_error = None
    except DataQualityError as exc:
        column_error = exc

    raw_uri = lake.table_uri("raw", contract.dataset)
    stream = ChunkStream(
        src, contract, cfg, gate if column_error is None else None, stage, batch_id, ingested_at, chunks
    )

    verdicts: list[Judged] = []
    prewrites: list[PreWrite] = []

    def judge() -> Judged:
        if not verdicts:
            if column_error is not None:
                verdicts.append(Judged(rows_in=stream.rows, column_error=str(column_error)))
            else:
                # clean/D's files are written while GX confirms the verdict (committed only if it holds)
                prewrite = prewrite_clean(lake, contract, stage) if cfg.data.prewrite_clean else None
                if prewrite is not None:
                    prewrites.append(prewrite)
                verdicts.append(Judged.of(gate.finish()))
        return verdicts[0]

    def write_raw(committed: bool) -> None:
        if committed:  # a retry whose raw commit already happened: validate the file, write nothing to raw
            stream.drain()
        else:
            write_pipelined(
                lake,
                raw_uri,
                raw_schema(contract),
                stream,
                app_id_for(batch_id),
                {"batch_id": batch_id, "source": src.uri},
                writer_properties=raw_properties(contract, raw_schema(contract)),
                parquet_options=raw_parquet_options(contract, raw_schema(contract)),
                # the verdict (the GX run: ~1.3 s at any size) is decided while raw/D's last files are
                # encoded and committed; commit_batch asks for it after the raw commit, as before
                while_committing=judge,
            )

    try:
        committed = commit_batch(
            lake,
            contract,
            result,
            stage=stage,
            at=ingested_at,
            checked=checked,
            write_raw=write_raw,
            judge=judge,
            prewrite=lambda: prewrites[0] if prewrites else None,  # started by judge()
        )
    finally:
        for prewrite in prewrites:  # files of a clean commit that was not made from them
            prewrite.discard()
    if committed is not None:
        shutil.rmtree(stage, ignore_errors=True)
    return result


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
        "event_emitted",
        "raw_version",
        "clean_version",
        "quarantine_version",
        "data_docs_path",
        "contract_version",
    )
    return {k: getattr(r, k) for k in keys}
