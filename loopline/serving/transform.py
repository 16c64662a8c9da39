"""The fitted feature transform compiled for the serving path: typed numpy columns in, float32 matrix out.

`loopline.features.FeatureTransform.transform` takes a pandas DataFrame and costs a few milliseconds of
pandas overhead per call, whatever the row count. Serving already holds each column as a typed numpy array
(`loopline.serving.inputs`), so this module applies the same steps with the same numpy arithmetic straight
on those arrays: bit-identical output (a test compares both on every step kind), without pandas.
A step kind this module does not know makes `compile_transform` return None, and the server falls back to
the pandas transform, so a new step kind in features.py can never serve wrong features.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from loopline.serving.inputs import Column, TypedRows

StepFn = Callable[[Column, int], np.ndarray]
_TS_SCALE = {"hour": 23.0, "dayofweek": 6.0, "month": 11.0, "dayofyear": 365.0, "year": 1.0}


def compile_transform(transform: Any) -> Callable[[TypedRows], np.ndarray] | None:
    """A function TypedRows -> float32 [n, d] equal to `transform.transform(frame)`, or None if a step
    kind is unknown here."""
    steps: list[tuple[str, StepFn, int]] = []
    for step in transform.steps:
        compiled = _compile_step(step)
        if compiled is None:
            return None
        steps.append((step["column"], *compiled))
    width = len(transform.feature_names)
    if sum(w for _, _, w in steps) != width:
        return None

    def apply(rows: TypedRows) -> np.ndarray:
        n = rows.n_rows
        out = np.empty((n, width), dtype=np.float32)
        j = 0
        for column, fn, w in steps:
            out[:, j : j + w] = fn(rows.columns[column], n)
            j += w
        return out

    return apply


def _compile_step(step: dict[str, Any]) -> tuple[StepFn, int] | None:
    kind = step["kind"]
    if kind == "numeric" and step["op"] in ("passthrough", "standardise", "log1p", "clip"):
        return _numeric(step), 2 if step["nullable"] else 1
    if kind == "category" and step["op"] in ("onehot", "index"):
        return _category(step), len(step["vocab"]) + 1 if step["op"] == "onehot" else 1
    if kind == "bool":
        return _bool, 1
    if kind == "timestamp" and all(p in _TS_SCALE for p in step["parts"]):
        return _timestamp(step["parts"]), len(step["parts"])
    if kind == "string_length":
        return _string_length(step["mean"], step["std"]), 1
    return None


def _as_float(col: Column) -> np.ndarray:
    values = col.values.astype(np.float64)
    if col.mask is not None:
        values[col.mask] = np.nan
    return values


def _numeric(step: dict[str, Any]) -> StepFn:
    op, nullable = step["op"], step["nullable"]

    def fn(col: Column, n: int) -> np.ndarray:
        values = _as_float(col)
        missing = ~np.isfinite(values)
        if op == "log1p":
            values = np.sign(values) * np.log1p(np.abs(values))
        if op == "clip":
            values = np.clip(values, step["lo"], step["hi"])
        if op != "passthrough":
            values = (values - step["mean"]) / step["std"]
            fill = 0.0
        else:
            fill = step["mean"]
        values = np.where(missing, fill, values)
        if nullable:
            return np.column_stack([values, missing.astype(np.float64)])
        return values[:, None]

    return fn


def _category(step: dict[str, Any]) -> StepFn:
    vocab = step["vocab"]
    index = {v: i for i, v in enumerate(vocab)}
    unknown = len(vocab)
    onehot = step["op"] == "onehot"

    def fn(col: Column, n: int) -> np.ndarray:
        codes = np.fromiter((index.get(v, unknown) for v in col.values), np.int64, n)
        if col.mask is not None:
            codes[col.mask] = unknown  # null shares the unknown bucket
        if onehot:
            block = np.zeros((n, unknown + 1), dtype=np.float32)
            block[np.arange(n), codes] = 1.0
            return block
        return ((codes + 1) % (unknown + 1)).astype(np.float64)[:, None]

    return fn


def _bool(col: Column, n: int) -> np.ndarray:
    values = col.values.astype(bool)
    if col.mask is not None:
        values = values & ~col.mask  # null reads as False, like fillna(False)
    return values.astype(np.float64)[:, None]


def _timestamp(parts: list[str]) -> StepFn:
    def fn(col: Column, n: int) -> np.ndarray:
        ts = col.values.astype("datetime64[us]")
        nat = np.isnat(ts)
        if nat.any():  # NaT arithmetic warns; the parts of a null are 0 (below), like pandas' na_value
            ts = np.where(nat, np.datetime64(0, "us"), ts)
        days = ts.astype("datetime64[D]")
        years = ts.astype("datetime64[Y]")
        cols = []
        for part in parts:
            if part == "hour":
                values = ((ts - days) // np.timedelta64(1, "h")).astype(np.float64)
            elif part == "dayofweek":  # Monday = 0; 1970-01-01 was a Thursday
                values = ((days.astype(np.int64) + 3) % 7).astype(np.float64)
            elif part == "month":
                values = (ts.astype("datetime64[M]").astype(np.int64) % 12 + 1).astype(np.float64)
            elif part == "dayofyear":
                values = ((days - years.astype("datetime64[D]")).astype(np.int64) + 1).astype(np.float64)
            else:  # year
                values = (years.astype(np.int64) + 1970).astype(np.float64)
            values[nat] = 0.0
            if part == "year":
                values = values - 2000.0
            cols.append(values / _TS_SCALE[part])
        return np.column_stack(cols) if cols else np.zeros((n, 0))

    return fn


def _string_length(mean: float, std: float) -> StepFn:
    def fn(col: Column, n: int) -> np.ndarray:
        lengths = np.fromiter((0 if v is None else len(v) for v in col.values), np.float64, n)
        return ((np.log1p(lengths) - mean) / std)[:, None]

    return fn
