"""Lake maintenance: compact the append-heavy Delta tables, expire old predictions, vacuum replaced files.

Every small commit (the serving log writes predictions/M every few seconds per server; an ingest adds a file
to raw/D, quarantine/D, clean/D, features/D and batches/D) leaves one small Parquet file, and nothing else
ever removes them: reads slow down file by file and the lake only grows. For each table, in this order:

1. **expire** (predictions/M only): delete the rows scored (`_scored_at`, UTC) more than
   `lake.predictions_retention_days` ago, in one commit. A row exactly at the cutoff stays.
2. **compact**: `optimize.compact()` once the table has `lake.compact_min_files` files under the target
   size. Compaction changes no data (its commit marks the old files removed with `dataChange=false`), so
   readers of any version see the same rows.
3. **vacuum**: delete the files that no version younger than `lake.file_retention_hours` uses (a week by
   default), plus orphans older than that (a crashed writer's file; files whose tombstone a checkpoint
   already dropped, which a "lite" vacuum would never find again: hence `full=True`). Within the retention,
   time travel and a reader holding an older snapshot keep working, and a writer's file that is not yet
   committed is younger than the retention, so it is never taken.

**Versions a model recorded.** A training run records `data.clean_version` and `data.features_version`,
and evaluation re-reads them (loopline/release/testset.py), months later. clean/D is rewritten by a retype
and features/D by a refit; compaction replaces their small files too. Vacuuming them would delete the files
of those old versions, so by default clean/D and features/D are compacted but never vacuumed (their
replaced files stay, and every version stays readable). With `lake.vacuum_pinned_tables` they are vacuumed
keeping the files of every version the caller lists in `keep_versions` (the task layer collects what MLflow
runs recorded); a version nobody listed is then readable only within the file retention. (Delta's own log
cleanup, which delta-rs runs at checkpoints after `delta.logRetentionDuration`, 30 days, can still make
versions older than that unreadable; maintenance does not change that.)

**Concurrent writers.** delta-rs checks every commit against the ones that landed since its snapshot.
Compaction and vacuum commit nothing a blind append conflicts with. A delete does: delta-rs 1.6 treats an
append from an older snapshot as having read the whole table, so the serving log's next append after an
expiry fails once with `CommitFailedError` and is retried (the inference log keeps its rows and retries).
When maintenance's own commit conflicts, it retries on a fresh snapshot (`MAX_ATTEMPTS`), then reports the
table as failed; a failed commit writes nothing, so no row is lost either way. On S3 everything goes through
the lake's storage options.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from deltalake.exceptions import CommitFailedError, DeltaError

from loopline.config import LakeConfig
from loopline.errors import ConfigError, LooplineError
from loopline.storage import delta
from loopline.storage.lake import Lake, split_s3_uri

log = logging.getLogger(__name__)

# The lake's Delta table families (folder names; data/contract_registry.py owns "contracts", monitoring/
# verdicts.py "drift", serving/log_delivery.py "predictions_deadletter"), by what names them.
DATASET_TABLES = ("raw", "quarantine", "clean", "features", "batches", "contracts")
MODEL_TABLES = ("predictions", "predictions_deadletter", "feedback", "drift")
PINNED_TABLES = ("clean", "features")  # a model records versions of these (see the module docstring)
EXPIRY_COLUMN = {"predictions": "_scored_at"}  # tables with a retention, and the UTC time it counts from
TARGET_FILE_BYTES = 100 * 1024 * 1024  # compaction's target: delta-rs's default (delta.targetFileSize)
DEFAULT_TOMBSTONE_HOURS = 168  # Delta's default delta.deletedFileRetentionDuration
MAX_ATTEMPTS = 4  # tries of one commit that conflicts with concurrent writers
RETRY_SECONDS = 0.5  # first wait between them; doubles


@dataclass
class TableReport:
    table: str  # "kind/name"
    version_before: int
    version_after: int
    files_before: int
    files_after: int
    rows_before: int
    rows_after: int
    rows_deleted: int = 0
    compacted: bool = False  # (dry run: would compact)
    files_compacted: int = 0  # small files replaced by compaction
    vacuumed: bool = False
    vacuum_skipped: str | None = None  # why the table was not vacuumed
    files_vacuumed: int = 0
    bytes_vacuumed: int = 0
    conflicts_retried: int = 0
    error: str | None = None


def maintain_lake(
    lake: Lake,
    cfg: LakeConfig,
    *,
    dataset: str | None = None,
    model: str | None = None,
    dry_run: bool = False,
    keep_versions: Mapping[str, Collection[int]] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Maintain every Delta table of the lake, or only `dataset`'s and/or `model`'s. `keep_versions`:
    {"clean/D": [3, 7], ...}, versions whose files a vacuum of a pinned table keeps. `dry_run`: commit and
    delete nothing, report what would happen (its vacuum counts what is vacuumable now: not yet the files
    this run's expiry and compaction would replace). `now`: the clock the retention counts from (UTC)."""
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(days=cfg.predictions_retention_days) if cfg.predictions_retention_days else None
    reports = [
        maintain_table(lake, kind, name, cfg, dry_run=dry_run, cutoff=cutoff, keep=(keep_versions or {}))
        for kind, name in lake_tables(lake, dataset=dataset, model=model)
    ]
    return {
        "lake": lake.root,
        "dry_run": dry_run,
        "expired_before": cutoff.isoformat() if cutoff else None,
        "file_retention_hours": cfg.file_retention_hours,
        "tables": [asdict(r) for r in reports],
        "rows_deleted": sum(r.rows_deleted for r in reports),
        "files_vacuumed": sum(r.files_vacuumed for r in reports),
        "bytes_vacuumed": sum(r.bytes_vacuumed for r in reports),
        "failed": [r.table for r in reports if r.error],
    }


def lake_tables(lake: Lake, *, dataset: str | None = None, model: str | None = None) -> list[tuple[str, str]]:
    """(kind, name) of the Delta tables to maintain: the named dataset's and model's, else all of them."""
    if dataset is None and model is None:
        return sorted(
            (kind, name) for kind in DATASET_TABLES + MODEL_TABLES for name in _table_names(lake, kind)
        )
    found: list[tuple[str, str]] = []
    for name, kinds, what in ((dataset, DATASET_TABLES, "dataset"), (model, MODEL_TABLES, "model")):
        if name is None:
            continue
        lake.uri(kinds[0], name)  # a name that cannot be a lake path is the user's error (exit 2)
        mine = [(kind, name) for kind in kinds if delta.open_table(lake, lake.uri(kind, name)) is not None]
        if not mine:
            known = sorted({n for kind in kinds for n in _table_names(lake, kind)})
            raise ConfigError(
                f"{what} {name!r} has no Delta tables in the lake {lake.root} "
                f"({'/'.join(kinds)}); known {what}s: {', '.join(known) or 'none'}"
            )
        found += mine
    return found


def maintain_table(
    lake: Lake,
    kind: str,
    name: str,
    cfg: LakeConfig,
    *,
    dry_run: bool = False,
    cutoff: datetime | None = None,
    keep: Mapping[str, Collection[int]] | None = None,
) -> TableReport:
    """Expire, compact and vacuum one table (the module docstring says which step runs where). A commit that
    still conflicts after `MAX_ATTEMPTS`, or storage that fails, is reported in `error`, not raised."""
    uri = lake.uri(kind, name)
    first = _open(lake, uri)
    files, rows = delta.files_and_rows(first)
    report = TableReport(f"{kind}/{name}", first.version(), first.version(), files, files, rows, rows)
    try:
        small = _small_files(first)  # counted before expiry: a dry run decides the same way
        # Expire: old predictions, one commit
        column = EXPIRY_COLUMN.get(kind)
        if column and cutoff is not None:
            report.rows_deleted = _expire(lake, uri, column, cutoff, dry_run, report)
        # Compact: many small files into few
        if small >= cfg.compact_min_files:
            report.compacted = True
            report.files_compacted = small if dry_run else _compact(lake, uri, report)
        # Vacuum: files no version within the retention uses
        pinned = kind in PINNED_TABLES
        if pinned and not cfg.vacuum_pinned_tables:
            report.vacuum_skipped = "a model's recorded version reads it (lake.vacuum_pinned_tables is off)"
        else:
            keep_versions = sorted(set((keep or {}).get(report.table, ()))) if pinned else None
            _vacuum(lake, uri, cfg.file_retention_hours, keep_versions, dry_run, report)
    except (OSError, LooplineError, DeltaError) as exc:
        report.error = f"{type(exc).__name__}: {exc}"
        log.warning("maintenance of %s failed: %s", report.table, report.error)
    last = _open(lake, uri)
    report.version_after = last.version()
    report.files_after, report.rows_after = delta.files_and_rows(last)
    return report


def _expire(lake: Lake, uri: str, column: str, cutoff: datetime, dry_run: bool, report: TableReport) -> int:
    """Delete the rows with `column` < cutoff in one commit (none if no row matches). Returns their count."""
    table = _open(lake, uri)
    if column not in [f.name for f in table.schema().fields]:
        return 0
    if dry_run:
        import pyarrow as pa
        import pyarrow.compute as pc

        limit = pa.scalar(cutoff.astimezone(UTC), type=pa.timestamp("us", tz="UTC"))
        return delta.dataset(table).count_rows(filter=pc.field(column) < limit)
    predicate = f"{column} < '{cutoff.astimezone(UTC).isoformat()}'"
    metrics = _with_retries(lambda: _open(lake, uri).delete(predicate), report)
    return int(metrics.get("num_deleted_rows", 0))


def _compact(lake: Lake, uri: str, report: TableReport) -> int:
    metrics = _with_retries(lambda: _open(lake, uri).optimize.compact(target_size=TARGET_FILE_BYTES), report)
    return int(metrics.get("numFilesRemoved", 0))


def _vacuum(
    lake: Lake, uri: str, hours: int, keep_versions: list[int] | None, dry_run: bool, report: TableReport
) -> None:
    """`full=True`: also orphans and files whose tombstone a checkpoint dropped (older than `hours`). The
    table's tombstone retention is raised to `hours` first when it is shorter: a checkpoint drops tombstones
    older than it, and full mode would then judge those files by their (older) write time."""
    if not dry_run and hours > _tombstone_hours(_open(lake, uri)):
        prop = {"delta.deletedFileRetentionDuration": f"interval {hours} hours"}
        _with_retries(lambda: _open(lake, uri).alter.set_table_properties(prop), report)
    sizes = _object_sizes(lake, uri)
    deleted = _with_retries(  # its START/END commits; deleting again what is already gone is harmless
        lambda: _open(lake, uri).vacuum(
            retention_hours=hours,
            dry_run=dry_run,
            enforce_retention_duration=False,  # lake.file_retention_hours is the setting that decides
            full=True,
            keep_versions=keep_versions or None,
        ),
        report,
    )
    report.vacuumed = True
    report.files_vacuumed = len(deleted)
    report.bytes_vacuumed = sum(sizes.get(path.lstrip("/"), 0) for path in deleted)


def _with_retries(commit, report: TableReport):
    """Run `commit` (which opens a fresh snapshot) until it does not conflict, at most MAX_ATTEMPTS times."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            return commit()
        except CommitFailedError:
            if attempt == MAX_ATTEMPTS:
                raise
            report.conflicts_retried += 1
            time.sleep(RETRY_SECONDS * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def _open(lake: Lake, uri: str):
    table = delta.open_table(lake, uri)
    if table is None:  # listed a moment ago: someone removed the whole table
        raise FileNotFoundError(f"no Delta table at {uri}")
    return table


def _small_files(table) -> int:
    actions = table.get_add_actions(flatten=True)
    return sum(1 for size in actions.column("size_bytes").to_pylist() if size < TARGET_FILE_BYTES)


_UNIT_HOURS = {"nanosecond": 1 / 3.6e12, "microsecond": 1 / 3.6e9, "millisecond": 1 / 3.6e6}
_UNIT_HOURS |= {"second": 1 / 3600, "minute": 1 / 60, "hour": 1, "day": 24, "week": 168}


def _tombstone_hours(table) -> float:
    """The table's delta.deletedFileRetentionDuration ("interval 7 days") in hours."""
    text = table.metadata().configuration.get("delta.deletedFileRetentionDuration") or ""
    match = re.fullmatch(r"\s*interval\s+(\d+)\s+([a-z]+?)s?\s*", text.lower())
    if not match or match.group(2) not in _UNIT_HOURS:
        return DEFAULT_TOMBSTONE_HOURS
    return int(match.group(1)) * _UNIT_HOURS[match.group(2)]


def _object_sizes(lake: Lake, uri: str) -> dict[str, int]:
    """Size of every file under the table, by its path relative to the table (as vacuum names them)."""
    if lake.is_s3:
        bucket, key = split_s3_uri(uri)
        prefix = key.rstrip("/") + "/"
        sizes: dict[str, int] = {}
        for page in lake.s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            sizes |= {o["Key"][len(prefix) :]: o["Size"] for o in page.get("Contents", [])}
        return sizes
    root = Path(uri)
    return {
        str(p.relative_to(root)).replace(os.sep, "/"): p.stat().st_size
        for p in root.rglob("*")
        if p.is_file() and "_delta_log" not in p.parts
    }


def _table_names(lake: Lake, kind: str) -> list[str]:
    """Names of the Delta tables under `kind/` (folders with a _delta_log)."""
    prefix = lake.uri(kind)
    if lake.is_s3:
        bucket, key = split_s3_uri(prefix)
        key = key.rstrip("/") + "/"
        names: set[str] = set()
        pages = (
            lake.s3_client()
            .get_paginator("list_objects_v2")
            .paginate(Bucket=bucket, Prefix=key, Delimiter="/")
        )
        for page in pages:
            names |= {p["Prefix"][len(key) :].strip("/") for p in page.get("CommonPrefixes", [])}
        candidates = sorted(names)
    else:
        root = Path(prefix)
        candidates = (
            sorted(p.name for p in root.iterdir() if (p / "_delta_log").is_dir()) if root.is_dir() else []
        )
    out = []
    for name in candidates:
        try:
            if delta.open_table(lake, lake.uri(kind, name)) is not None:
                out.append(name)
        except LooplineError:  # a folder whose name no command could have written: not ours
            continue
    return out
