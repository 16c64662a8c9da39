"""Rows of the inference log: what a micro-batch hands over (`LogEntry`: its scored rows, predictions and
each request's id, role and row count), the predictions/M schema of a contract, and the Arrow table (or, for
the dead letter, plain records) built from many entries at once.

Schema: the contract's feature columns and its id (typed as in clean/D; the id is null when the client did
not send it), then `_prediction`, `_model_version`, `_role` (champion, challenger or shadow), `_request_id`,
`_row_index` (the row's place in its request, from 0: with `_request_id`, the key label feedback joins on)
and `_scored_at` (UTC).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from loopline.data.contracts import Contract
from loopline.data.schemas import ARROW_TYPES
from loopline.serving.inputs import TypedRows

PREDICTION = "_prediction"
META_COLUMNS = ("_model_version", "_role", "_request_id")
ROW_INDEX = "_row_index"


@dataclass
class LogEntry:
    rows: TypedRows
    predictions: np.ndarray
    version: str
    requests: list[tuple[str, str, int]]  # (request id, role, rows) of each request, in row order
    scored_at: np.datetime64
    schema: pa.Schema  # the log schema of the model that scored the rows

    @property
    def request_id(self) -> str:
        """The request ids, for messages about the entry."""
        return ",".join(dict.fromkeys(r for r, _, _ in self.requests))


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
    fields.append(pa.field(ROW_INDEX, pa.int64()))
    fields.append(pa.field("_scored_at", pa.timestamp("us", tz="UTC")))
    return pa.schema(fields)


def to_table(entries: list[LogEntry], schema: pa.Schema) -> pa.Table:
    arrays = []
    for field in schema:
        name = field.name
        if name == PREDICTION:
            values = np.concatenate([np.asarray(e.predictions) for e in entries])
            arrays.append(pa.array(values.tolist() if values.dtype == object else values, type=field.type))
        elif name == "_scored_at":
            stamps = np.concatenate([np.full(e.rows.n_rows, e.scored_at) for e in entries])
            arrays.append(pa.array(stamps, type=pa.timestamp("us")).cast(field.type))
        elif name == ROW_INDEX:
            counts = [n for e in entries for _, _, n in e.requests]
            arrays.append(pa.array(_row_indexes(counts)))
        elif name == "_model_version":
            arrays.append(_repeat_strings([(e.version, e.rows.n_rows) for e in entries]))
        elif name in ("_request_id", "_role"):
            at = 0 if name == "_request_id" else 1
            arrays.append(_repeat_strings([(r[at], r[2]) for e in entries for r in e.requests]))
        else:
            arrays.append(_column_array([e.rows.columns[name] for e in entries], field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def entry_records(entry: LogEntry) -> list[dict]:
    """An entry's rows as plain values (for the dead letter of rows no Arrow table could hold)."""
    columns = {}
    for name, col in entry.rows.columns.items():
        values = col.values.astype(object) if col.values.dtype.kind == "M" else col.values
        values = values.tolist()
        if col.mask is not None:
            values = [None if m else v for v, m in zip(values, col.mask.tolist(), strict=True)]
        columns[name] = values
    predictions = np.asarray(entry.predictions).tolist()
    predictions += [None] * (entry.rows.n_rows - len(predictions))  # a model that answered too few
    stamp = entry.scored_at.astype("datetime64[us]").astype(object)
    records = []
    i = 0
    for request_id, role, n in entry.requests:
        meta = {"_model_version": entry.version, "_role": role, "_request_id": request_id}
        for row in range(n):
            records.append(
                {
                    **{k: v[i] for k, v in columns.items()},
                    PREDICTION: predictions[i],
                    **meta,
                    ROW_INDEX: row,
                    "_scored_at": stamp,
                }
            )
            i += 1
    return records


def entry_meta(entry: LogEntry) -> list[dict]:
    """Who scored each row of an entry whose values cannot even be read (the last-resort dead letter)."""
    return [
        {"_model_version": entry.version, "_role": role, "_request_id": request_id}
        for request_id, role, n in entry.requests
        for _ in range(n)
    ]


def _row_indexes(counts: list[int]) -> np.ndarray:
    """0..n-1 for each request's n rows, in one vectorised pass."""
    counts_array = np.asarray(counts, dtype=np.int64)
    total = int(counts_array.sum())
    starts = np.repeat(np.cumsum(counts_array) - counts_array, counts_array)
    return np.arange(total, dtype=np.int64) - starts


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
