"""Rows of the inference log: what a request hands over (`LogEntry`), the predictions/M schema of a
contract, and the Arrow table (or, for the dead letter, plain records) built from many entries at once.

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
    role: str
    request_id: str
    scored_at: np.datetime64
    schema: pa.Schema  # the log schema of the model that scored the rows


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
            arrays.append(
                pa.array(np.concatenate([np.arange(e.rows.n_rows, dtype=np.int64) for e in entries]))
            )
        elif name in META_COLUMNS:
            attr = {"_model_version": "version", "_role": "role", "_request_id": "request_id"}[name]
            arrays.append(_repeat_strings([(getattr(e, attr), e.rows.n_rows) for e in entries]))
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
    meta = {"_model_version": entry.version, "_role": entry.role, "_request_id": entry.request_id}
    return [
        {
            **{k: v[i] for k, v in columns.items()},
            PREDICTION: predictions[i],
            **meta,
            ROW_INDEX: i,
            "_scored_at": stamp,
        }
        for i in range(entry.rows.n_rows)
    ]


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
