"""`loopline feedback --model M --source FILE`: labels in bulk from a CSV or Parquet file (local or s3://).

The file has the columns request_id, row and label (others are ignored and named in the report). Every row
either lands in feedback/M (the same MERGE as POST /feedback, so loading a file twice lands each label once)
or is rejected with its line, field, value and reason: the counts always add up to the file's rows, and the
rejected rows are written whole to a CSV beside the report. A file that cannot be read, or lacks one of the
three columns, is a SourceError naming the file and the column (exit 2) and lands nothing.
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from loopline.data.contracts import Contract
from loopline.errors import SourceError
from loopline.serving.feedback import check_key, check_label, feedback_schema, merge_feedback, to_table
from loopline.storage.lake import Lake

COLUMNS = ("request_id", "row", "label")
CHUNK_ROWS = 100_000
EXAMPLES = 20


def load_feedback_file(
    lake: Lake, model: str, source: str, contract: Contract, *, rejected_dir: str | Path
) -> dict[str, Any]:
    """Land the file's labels; returns rows, inserted, updated, unchanged, rejected, examples of rejected
    rows (line, field, value, reason), the rejected-rows file and the ignored columns."""
    from loopline.storage import sources

    workdir = sources.scratch_dir()
    try:
        src = sources.fetch(source, lake, workdir)
        if not Path(src.local_path).is_file():
            raise SourceError("no such file", file=source)
        if src.fmt not in ("csv", "parquet"):
            raise SourceError(f"feedback files are CSV or Parquet, not {src.fmt}", file=source)
        schema = feedback_schema(contract)
        report: dict[str, Any] = {"model": model, "source": src.uri, "rows": 0, "inserted": 0, "updated": 0}
        report |= {
            "unchanged": 0,
            "rejected": 0,
            "examples": [],
            "rejected_file": None,
            "ignored_columns": [],
        }
        rejected: list[dict[str, Any]] = []
        for first_line, chunk in _chunks(src.local_path, src.fmt, source, report):
            good = []
            for offset, record in enumerate(chunk):
                line = first_line + offset
                try:
                    request_id, row = _key(record)
                    label = _label(record.get("label"), contract, text=src.fmt == "csv")
                    good.append((request_id, row, label))
                except _Bad as bad:
                    rejected.append({"line": line, **record, "_field": bad.field, "_reason": bad.reason})
                    if len(report["examples"]) < EXAMPLES:
                        report["examples"].append(
                            {
                                "line": line,
                                "field": bad.field,
                                "value": record.get(bad.field),
                                "reason": bad.reason,
                            }
                        )
            report["rows"] += len(chunk)
            if good:
                outcome = merge_feedback(lake, model, to_table(good, schema, f"file:{src.uri}"))
                for key, value in outcome.items():
                    report[key] += value
        report["rejected"] = len(rejected)
        if rejected:
            report["rejected_file"] = str(_write_rejected(rejected, Path(rejected_dir), model))
        return report
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


class _Bad(Exception):
    def __init__(self, field: str, reason: str):
        super().__init__(reason)
        self.field, self.reason = field, reason


def _key(record: dict[str, Any]) -> tuple[str, int]:
    request_id = record.get("request_id")
    if isinstance(request_id, str):
        request_id = request_id.strip()
    row = record.get("row")
    if isinstance(row, str):
        text = row.strip()
        row = int(text) if text.isdigit() else text
    try:
        check_key(request_id, 0)
    except ValueError as exc:
        raise _Bad("request_id", str(exc)) from None
    try:
        return check_key(request_id, row)
    except ValueError as exc:
        raise _Bad("row", str(exc)) from None


def _label(value: Any, contract: Contract, *, text: bool) -> Any:
    if text and isinstance(value, str) and value.strip() == "":
        value = None
    try:
        return check_label(value, contract, text=text)
    except ValueError as exc:
        raise _Bad("label", str(exc)) from None


def _chunks(path: str, fmt: str, source: str, report: dict) -> Iterator[tuple[int, list[dict]]]:
    """(first line number, records) per chunk; CSV cells stay text (checked by the label's type), a line
    number counts the header as line 1; a Parquet "line" is the row's number from 1."""
    try:
        if fmt == "csv":
            import pyarrow.csv as pcsv

            names = pcsv.open_csv(path).schema.names
            _check_columns(names, source, report)
            reader = pcsv.open_csv(
                path,
                read_options=pcsv.ReadOptions(block_size=1 << 22),
                convert_options=pcsv.ConvertOptions(
                    column_types={c: pa.string() for c in names}, include_columns=list(COLUMNS)
                ),
            )
            line = 2
        else:
            import pyarrow.parquet as pq

            file = pq.ParquetFile(path)
            _check_columns(file.schema_arrow.names, source, report)
            reader = file.iter_batches(batch_size=CHUNK_ROWS, columns=list(COLUMNS))
            line = 1
        for batch in reader:
            records = batch.to_pylist()
            yield line, records
            line += len(records)
    except (pa.ArrowInvalid, OSError) as exc:
        raise SourceError(f"cannot be read as {fmt}: {exc}", file=source) from None


def _check_columns(names: list[str], source: str, report: dict) -> None:
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise SourceError(
            f"the column(s) {', '.join(missing)} are missing; a feedback file has the columns "
            f"request_id, row and label (found: {', '.join(names) or 'none'})",
            file=source,
        )
    report["ignored_columns"] = [c for c in names if c not in COLUMNS]


def _write_rejected(rows: list[dict[str, Any]], directory: Path, model: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    path = directory / f"feedback-{model}-{stamp}.csv"
    fields = ["line", *COLUMNS, "_field", "_reason"]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path
