"""The fitted feature transform compiled for the serving path: typed numpy columns in, float32 matrix out.

`loopline.features.FeatureTransform.transform` takes a pandas DataFrame and costs a few milliseconds of
pandas overhead per call, whatever the row count. Serving already holds each column as a typed numpy array
(`loopline.serving.inputs`), so this module applies the same steps with the same numpy arithmetic straight
on those arrays: bit-identical output (a test compares both on every step kind), without pandas.
A step kind this module does not know makes `compile_transform` return None, and the server falls back to
the pandas transform, so a new step kind in loopline/features/transform.py can never serve wrong features.
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
    kind is unknown here. Numeric steps run together as one [n, k] array (per-column constants as
    vectors: the same elementwise IEEE operations, so the same bits); the other steps run per column."""
    numeric = _NumericBlock()
    others: list[tuple[str, StepFn, int]] = []  # (column, fn, first output position)
    j = 0
    for step in transform.steps:
        if step["kind"] == "numeric" and step["op"] in _NUMERIC_OPS:
            numeric.add(step, j)
            j += 2 if step["nullable"] else 1
            continue
        compiled = _compile_step(step)
        if compiled is None:
            return None
        fn, width = compiled
        others.append((step["column"], fn, j))
        j += width
    width = len(transform.feature_names)
    if j != width:
        return None
    numeric.freeze()

    def apply(rows: TypedRows) -> np.ndarray:
        n = rows.n_rows
        out = np.empty((n, width), dtype=np.float32)
        numeric.apply(rows, out)
        for column, fn, start in others:
            block = fn(rows.columns[column], n)
            out[:, start : start + block.shape[1]] = block
        return out

    return apply


_NUMERIC_OPS = ("passthrough", "standardise", "log1p", "clip")


class _NumericBlock:
    """All numeric steps as one array: loopline.features.transform._apply_step's arithmetic, column-vectorised."""

    def __init__(self) -> None:
        self.columns: list[str] = []
        self.positions: list[int] = []
        self.steps: list[dict[str, Any]] = []

    def add(self, step: dict[str, Any], position: int) -> None:
        self.columns.append(step["column"])
        self.positions.append(position)
        self.steps.append(step)

    def freeze(self) -> None:
        steps = self.steps
        ops = np.array([s["op"] for s in steps], dtype=object)
        self.log1p = np.flatnonzero(ops == "log1p")
        self.clip = np.flatnonzero(ops == "clip")
        self.lo = np.array([steps[i]["lo"] for i in self.clip], dtype=np.float64)
        self.hi = np.array([steps[i]["hi"] for i in self.clip], dtype=np.float64)
        self.scaled = np.flatnonzero(ops != "passthrough")
        self.mean = np.array([steps[i]["mean"] for i in self.scaled], dtype=np.float64)
        self.std = np.array([steps[i]["std"] for i in self.scaled], dtype=np.float64)
        # a missing value becomes 0 after scaling, the training mean when passed through
        self.fill = np.array(
            [0.0 if s["op"] != "passthrough" else s["mean"] for s in steps], dtype=np.float64
        )
        self.value_at = np.array(self.positions, dtype=np.int64)
        self.nullable = np.flatnonzero(np.array([bool(s["nullable"]) for s in steps], dtype=bool))
        self.null_at = self.value_at[self.nullable] + 1
        self._rows_at: dict[tuple[str, ...], np.ndarray | None] = {}

    def _rows_in(self, names: tuple[str, ...]) -> np.ndarray | None:
        """Where this block's columns are among the rows of a check matrix of `names` (None: not all are)."""
        found = self._rows_at.get(names, False)
        if found is False:
            where = {name: i for i, name in enumerate(names)}
            found = (
                np.array([where[c] for c in self.columns], dtype=np.intp)
                if all(c in where for c in self.columns)
                else None
            )
            if len(self._rows_at) > 64:  # clients sending ever new column subsets: stay bounded
                self._rows_at.clear()
            self._rows_at[names] = found
        return found

    def apply(self, rows: TypedRows, out: np.ndarray) -> None:
        if not self.columns:
            return
        at = self._rows_in(rows.numbers[0]) if rows.numbers is not None else None
        if at is not None:  # the input check's matrix holds them all: one gather, not a loop per column
            values = rows.numbers[1][at].T
        else:
            values = np.empty((rows.n_rows, len(self.columns)), dtype=np.float64)
            for i, name in enumerate(self.columns):
                values[:, i] = _as_float(rows.columns[name])
        missing = ~np.isfinite(values)
        with np.errstate(invalid="ignore"):
            if self.log1p.size:
                block = values[:, self.log1p]
                values[:, self.log1p] = np.sign(block) * np.log1p(np.abs(block))
            if self.clip.size:
                values[:, self.clip] = np.clip(values[:, self.clip], self.lo, self.hi)
            if self.scaled.size:
                values[:, self.scaled] = (values[:, self.scaled] - self.mean) / self.std
        values = np.where(missing, self.fill, values)
        out[:, self.value_at] = values
        if self.nullable.size:
            out[:, self.null_at] = missing[:, self.nullable]


def _compile_step(step: dict[str, Any]) -> tuple[StepFn, int] | None:
    kind = step["kind"]
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
