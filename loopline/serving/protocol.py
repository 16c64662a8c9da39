"""MLflow's scoring protocol: request bodies in, columns out; predictions in, response bodies out.

`POST /invocations` takes a JSON object with exactly one of the four MLflow input formats (plus an
optional `params`, accepted and ignored as `mlflow models serve` does for a model without params):

    {"dataframe_split": {"columns": [...], "data": [[...], ...]}}
    {"dataframe_records": [{"col": value, ...}, ...]}
    {"instances": [{"col": value, ...}, ...]}                      (TF-serving row format)
    {"inputs": {"col": [values...], ...}}  or  {"inputs": [{...}, ...]}   (TF-serving columnar or rows)

Parsing yields plain Python columns (`dict[name, list]`) without pandas: the request path stays in
orjson + lists, and typing happens once per column in `loopline.serving.inputs`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
_ALLOWED_KEYS = frozenset((*FORMATS, "params"))


class RequestError(Exception):
    """A request the server refuses: HTTP status, MLflow-style error code, message, and fields at fault."""

    def __init__(self, status: int, message: str, *, fields: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.fields = fields or []

    @property
    def error_code(self) -> str:
        return {400: "BAD_REQUEST", 413: "REQUEST_TOO_LARGE", 415: "UNSUPPORTED_MEDIA_TYPE"}.get(
            self.status, "INVALID_PARAMETER_VALUE"
        )

    def body(self) -> bytes:
        payload: dict[str, Any] = {"error_code": self.error_code, "message": self.message}
        if self.fields:
            payload["fields"] = self.fields
        return orjson.dumps(payload)


@dataclass
class Columns:
    """Parsed request rows, column-wise. `data[name]` has `n_rows` values (None where a record lacked it)."""

    data: dict[str, list[Any]]
    n_rows: int
    format: str


def parse_body(body: bytes) -> Columns:
    """JSON body -> Columns. Raises RequestError(400) for bad JSON or a body in no known format."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestError(400, f"request body is not valid JSON: {exc}") from None
    return parse_document(doc)


def parse_document(doc: Any) -> Columns:
    if not isinstance(doc, dict):
        raise RequestError(
            400, f"the request body must be a JSON object with one of the keys {list(FORMATS)}"
        )
    keys = [k for k in doc if k in FORMATS]
    unknown = [k for k in doc if k not in _ALLOWED_KEYS]
    if len(keys) != 1 or unknown:
        raise RequestError(
            400,
            f"the request body must have exactly one of the keys {list(FORMATS)} (and optionally 'params'); "
            f"got {sorted(doc)}",
        )
    fmt = keys[0]
    payload = doc[fmt]
    if fmt == "dataframe_split":
        return _parse_split(payload)
    if fmt == "dataframe_records":
        return _parse_records(payload, fmt)
    if fmt == "instances":
        if isinstance(payload, dict):  # a single instance
            return _parse_records([payload], fmt)
        return _parse_records(payload, fmt)
    if isinstance(payload, dict):
        return _parse_columnar(payload)
    return _parse_records(payload, fmt)


def _parse_split(payload: Any) -> Columns:
    if not isinstance(payload, dict):
        raise RequestError(400, "dataframe_split must be an object with 'columns' and 'data'")
    columns, data = payload.get("columns"), payload.get("data")
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise RequestError(400, "dataframe_split.columns must be a list of column names")
    if len(set(columns)) != len(columns):
        dupes = sorted({c for c in columns if columns.count(c) > 1})
        raise RequestError(
            422,
            f"duplicate column(s) {dupes}",
            fields=[{"field": c, "error": "duplicate column"} for c in dupes],
        )
    if not isinstance(data, list):
        raise RequestError(400, "dataframe_split.data must be a list of rows")
    width = len(columns)
    for i, row in enumerate(data):
        if type(row) is not list or len(row) != width:
            raise RequestError(
                400, f"dataframe_split.data[{i}] must be a list of {width} values (one per column)"
            )
    if not data:
        return Columns({c: [] for c in columns}, 0, "dataframe_split")
    return Columns(
        dict(zip(columns, map(list, zip(*data, strict=True)), strict=True)), len(data), "dataframe_split"
    )


def _parse_records(payload: Any, fmt: str) -> Columns:
    if not isinstance(payload, list):
        raise RequestError(400, f"{fmt} must be a list of objects, one per row")
    if not payload:
        return Columns({}, 0, fmt)
    first = payload[0]
    if type(first) is not dict:
        raise RequestError(400, f"{fmt}[0] must be an object mapping column names to values")
    keys = first.keys()
    if all(type(r) is dict and r.keys() == keys for r in payload):
        # the common case: every record has the same keys
        return Columns({k: [r[k] for r in payload] for k in keys}, len(payload), fmt)
    names: dict[str, None] = {}
    for i, row in enumerate(payload):
        if type(row) is not dict:
            raise RequestError(400, f"{fmt}[{i}] must be an object mapping column names to values")
        names.update(dict.fromkeys(row))
    # pandas semantics: a key absent from some records is a missing value there
    return Columns({k: [r.get(k) for r in payload] for k in names}, len(payload), fmt)


def _parse_columnar(payload: dict[str, Any]) -> Columns:
    if not payload:
        return Columns({}, 0, "inputs")
    lengths = {k: len(v) if type(v) is list else None for k, v in payload.items()}
    if all(n is None for n in lengths.values()):  # one row given as scalars
        return Columns({k: [v] for k, v in payload.items()}, 1, "inputs")
    if any(n is None for n in lengths.values()) or len(set(lengths.values())) != 1:
        raise RequestError(
            400, f"inputs: every column must be a list of the same length; got lengths {lengths}"
        )
    return Columns({k: v for k, v in payload.items()}, next(iter(lengths.values())), "inputs")


def encode_predictions(predictions: Any) -> bytes:
    """The body `mlflow models serve` writes for the loopline pyfunc, whose predict returns a numpy array:
    `{"predictions": [v, ...]}` (a test holds both servers to the same bytes-level JSON)."""
    if isinstance(predictions, np.ndarray) and predictions.dtype != object:
        return orjson.dumps({"predictions": predictions}, option=orjson.OPT_SERIALIZE_NUMPY)
    values = predictions.tolist() if hasattr(predictions, "tolist") else list(predictions)
    return orjson.dumps({"predictions": values})
