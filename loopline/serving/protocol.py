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


class Columns:
    """Parsed request rows, column-wise. `data[name]` has `n_rows` values (None where a record lacked it).

    A `dataframe_split` body keeps its rows as parsed (`split`: column names and row lists) and is turned
    into columns only when `data` is first read: the server merges the rows of a micro-batch's requests
    first (`merge_columns`) and transposes them once, instead of once per request."""

    __slots__ = ("_data", "_split", "format", "n_rows")

    def __init__(
        self,
        data: dict[str, list[Any]] | None,
        n_rows: int,
        format: str,
        *,
        split: tuple[list[str], list[list[Any]]] | None = None,
    ):
        self._data = data
        self._split = split
        self.n_rows = n_rows
        self.format = format

    @property
    def data(self) -> dict[str, list[Any]]:
        if self._data is None:
            names, rows = self._split
            if rows:
                self._data = dict(zip(names, map(list, zip(*rows, strict=True)), strict=True))
            else:
                self._data = {c: [] for c in names}
            self._split = None
        return self._data

    @property
    def names(self) -> tuple[str, ...]:
        """The column names, in the order the request gave them (requests merge only on equal names)."""
        return tuple(self._split[0]) if self._data is None else tuple(self._data)


def merge_columns(parts: list[Columns]) -> Columns:
    """The rows of several requests with the same column names as one Columns, in request order."""
    if len(parts) == 1:
        return parts[0]
    n = sum(p.n_rows for p in parts)
    if all(p._data is None for p in parts):  # dataframe_split: join the row lists, transpose later once
        rows: list[list[Any]] = []
        for p in parts:
            rows += p._split[1]
        return Columns(None, n, "merged", split=(parts[0]._split[0], rows))
    data: dict[str, list[Any]] = {}
    for name in parts[0].data:
        merged: list[Any] = []
        for p in parts:
            merged += p.data[name]
        data[name] = merged
    return Columns(data, n, "merged")


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
    if type(columns) is not list or not set(map(type, columns)) <= {str}:
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
    # C-level passes over the rows; the loop that names the bad row runs only when one is bad
    if not (set(map(type, data)) <= {list} and set(map(len, data)) <= {width}):
        for i, row in enumerate(data):
            if type(row) is not list or len(row) != width:
                raise RequestError(
                    400, f"dataframe_split.data[{i}] must be a list of {width} values (one per column)"
                )
    return Columns(None, len(data), "dataframe_split", split=(columns, data))


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
    # orjson serialises numeric and bool arrays natively; labels of a multiclass model may be a numpy text
    # array ('<U5') or objects, which go through a list
    if isinstance(predictions, np.ndarray) and predictions.dtype.kind in "biuf":
        return orjson.dumps({"predictions": predictions}, option=orjson.OPT_SERIALIZE_NUMPY)
    values = predictions.tolist() if hasattr(predictions, "tolist") else list(predictions)
    return orjson.dumps({"predictions": values})
