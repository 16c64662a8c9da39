"""Request columns checked against the dataset contract and typed, one numpy array per column.

The checks are those of the validation gate, applied to JSON values: a column the contract does not name,
a missing feature column (nullable ones may be left out), a value of the wrong JSON type, a null in a
non-nullable column, a value outside min/max, not among `values`, too long, or not matching `regex`.
Every failure is collected and reported together as a 422 naming each field and the first rows at fault.

Types are strict about JSON kinds (a number column takes JSON numbers, not "3.5" strings) but accept the
spellings an honest client produces: a whole float (3.0) in an int column, and ISO 8601 text for a
timestamp (the ingest grammar: an offset is converted to UTC, a naive value is taken as UTC).

Each typed column is a `Column(values, mask)`: int -> int64, float -> float64 (NaN where null), bool ->
bool, string/category -> object (None where null), timestamp -> datetime64[us] (NaT where null); `mask`
marks nulls (None when there are none).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from loopline.data.contracts import ColumnSpec, Contract
from loopline.serving.protocol import Columns, RequestError, merge_columns

MAX_ROWS_REPORTED = 5  # rows named per failing field; enough to find the pattern, short enough to read
_NONE = type(None)
_INT_LIMIT = 2**63
_EMPTY: frozenset = frozenset()


@dataclass
class Column:
    values: np.ndarray
    mask: np.ndarray | None  # True where the value is null; None: no nulls

    def __len__(self) -> int:
        return len(self.values)


@dataclass
class TypedRows:
    """Checked rows: every feature column of the contract plus the id column, in contract order.

    `numbers`, when set, is the check's own float64 matrix [k, n_rows] of k number columns (names in order)
    that passed in one pass: the same values as those columns (an int column's as floats, NaN where null),
    so the compiled transform takes them as one block instead of re-stacking k columns."""

    columns: dict[str, Column]
    n_rows: int
    numbers: tuple[tuple[str, ...], np.ndarray] | None = None


class InputChecker:
    """Checks request columns against one contract. Built once per loaded model (regexes compiled once)."""

    def __init__(self, contract: Contract):
        self.contract = contract
        self.feature_columns = contract.feature_columns
        self.kept = [c for c in contract.column_names if c != contract.label]  # features + id
        self.optional = {contract.id, contract.label} | {
            c for c in self.feature_columns if contract.columns[c].nullable
        }
        self.numeric = [c for c in self.kept if contract.columns[c].is_numeric]
        # numeric columns the one-pass check can take (no `values` list) and the JSON types it accepts
        self.numeric_simple = [c for c in self.numeric if contract.columns[c].values is None]
        self.int_columns = {c for c in self.numeric if contract.columns[c].type == "int"}
        self.allowed_types = {c: {int} if c in self.int_columns else {int, float} for c in self.numeric}
        # a nullable column may bring JSON nulls into the one-pass check too (None -> NaN -> its mask)
        self.allowed_with_null = {
            c: self.allowed_types[c] | {_NONE} for c in self.numeric if contract.columns[c].nullable
        }
        self._blocks: dict[tuple[str, ...], _NumberBlock] = {}
        self.regex = {n: re.compile(s.regex) for n, s in contract.columns.items() if s.regex}

    def check(self, cols: Columns) -> TypedRows:
        """Type and check every column; raise RequestError(422) naming all fields at fault."""
        errors: list[dict[str, Any]] = []
        known = self.contract.columns
        for name in cols.data:
            if name not in known:
                errors.append({"field": name, "error": "unknown column: the contract does not name it"})
        for name in self.feature_columns:
            if name not in cols.data and name not in self.optional:
                errors.append({"field": name, "error": "missing column"})
        typed, numbers = self._check_numbers_at_once(cols)
        for name in self.kept:
            if name in typed:
                continue
            raw = cols.data.get(name)
            if raw is None:
                typed[name] = _null_column(known[name], cols.n_rows)
                continue
            column, problems = check_column(known[name], raw, self.regex.get(name))
            errors += [{"field": name, **p} for p in problems]
            typed[name] = column
        if (
            self.contract.label in cols.data
        ):  # a label may come along (scored rows with ground truth); type-check it
            _, problems = check_column(known[self.contract.label], cols.data[self.contract.label], None)
            errors += [{"field": self.contract.label, **p} for p in problems]
        if errors:
            names = sorted({e["field"] for e in errors})
            raise RequestError(422, f"input does not match the contract in field(s) {names}", fields=errors)
        return TypedRows({name: typed[name] for name in self.kept}, cols.n_rows, numbers)

    def check_batch(self, parts: list[Columns]) -> tuple[TypedRows, list[RequestError | None]]:
        """The requests of one micro-batch checked together: (the rows of those that pass, in order; each
        request's RequestError or None). Consecutive requests with the same column names are merged and
        checked in one pass, so the per-column cost is paid once per batch; only a merged group that
        fails is checked again request by request, so each request gets its own 422 naming its own rows."""
        passed: list[TypedRows] = []
        errors: list[RequestError | None] = []
        start = 0
        while start < len(parts):
            names = parts[start].names
            end = start + 1
            while end < len(parts) and parts[end].names == names:
                end += 1
            group = parts[start:end]
            try:
                passed.append(self.check(merge_columns(group)))
                errors += [None] * len(group)
            except RequestError as exc:
                if len(group) == 1:
                    errors.append(exc)
                else:
                    for part in group:
                        try:
                            passed.append(self.check(part))
                            errors.append(None)
                        except RequestError as alone:
                            errors.append(alone)
            start = end
        if not passed:
            return TypedRows({}, 0), errors
        return concat_rows(passed), errors

    def _check_numbers_at_once(
        self, cols: Columns
    ) -> tuple[dict[str, Column], tuple[tuple[str, ...], np.ndarray] | None]:
        """The common case in one numpy pass: number columns of JSON numbers (and nulls where the column is
        nullable), all in range. A column that fails here (or is not that simple) goes through
        `check_column`, which names the problem. Returns the typed columns that passed and, when every
        column taken passed, their float64 matrix (`TypedRows.numbers`)."""
        data = cols.data
        names = []
        for name in self.numeric_simple:
            raw = data.get(name)
            if raw is None:
                continue
            types = set(map(type, raw))
            if types <= self.allowed_types[name] or types <= self.allowed_with_null.get(name, _EMPTY):
                names.append(name)
        if not names or cols.n_rows == 0:
            return {}, None
        try:
            # via an object array: about twice as fast as numpy's nested-list discovery for floats. None
            # becomes NaN here, and JSON has no NaN, so NaN marks exactly the nulls
            matrix = np.array([data[n] for n in names], dtype=object).astype(np.float64)
        except (OverflowError, ValueError, TypeError):  # an int beyond float range: the column path names it
            return {}, None
        key = tuple(names)
        block = self._blocks.get(key)
        if block is None:
            if len(self._blocks) > 64:  # clients sending ever new column subsets: stay bounded
                self._blocks.clear()
            block = self._blocks[key] = _NumberBlock(self.contract, names)
        with np.errstate(invalid="ignore"):
            null = np.isnan(matrix)
            ok = (matrix >= block.lows) & (matrix <= block.highs)  # False for NaN
            ok &= np.abs(matrix) <= 2**53  # no infinity; ints beyond this need exact handling
            ok |= null & block.nullable  # a null where the column allows one
        good = ok.all(axis=1).tolist()
        has_null = null.any(axis=1).tolist()
        out: dict[str, Column] = {}
        for name, row, mask, passed, nulls in zip(names, matrix, null, good, has_null, strict=True):
            if not passed:
                continue
            if not nulls:
                mask = None
            if name in self.int_columns:
                row = (np.where(mask, 0.0, row) if mask is not None else row).astype(np.int64)
            out[name] = Column(row, mask)
        return out, ((key, matrix) if len(out) == len(names) else None)


class _NumberBlock:
    """Per-row bounds of a set of number columns, as [k, 1] arrays broadcast over the [k, n] matrix."""

    def __init__(self, contract: Contract, names: list[str]):
        specs = [contract.columns[n] for n in names]
        self.lows = np.array([-np.inf if s.min is None else s.min for s in specs], dtype=np.float64)[:, None]
        self.highs = np.array([np.inf if s.max is None else s.max for s in specs], dtype=np.float64)[:, None]
        self.nullable = np.array([s.nullable for s in specs], dtype=bool)[:, None]


def check_column(spec: ColumnSpec, raw: list[Any], regex: re.Pattern | None) -> tuple[Column, list[dict]]:
    """One column: its typed values and the problems found (each `{"error", "rows"}`)."""
    kind = spec.type
    if kind in ("int", "float"):
        column, problems = _numbers(spec, raw)
    elif kind == "bool":
        column, problems = _bools(raw)
    elif kind in ("string", "category"):
        column, problems = _strings(spec, raw, regex)
    else:
        column, problems = _timestamps(raw)
    if column.mask is not None and not spec.nullable:
        rows = np.flatnonzero(column.mask & ~_bad_mask(problems, len(raw)))
        if rows.size:
            problems.append(_problem("null in a non-nullable column", rows))
    return column, problems


def _problem(error: str, rows: Any) -> dict[str, Any]:
    rows = [int(r) for r in list(rows)[:MAX_ROWS_REPORTED]]
    return {"error": error, "rows": rows}


def _bad_mask(problems: list[dict], n: int) -> np.ndarray:
    mask = np.zeros(n, bool)
    for p in problems:
        mask[p["rows"]] = True
    return mask


def _null_column(spec: ColumnSpec, n: int) -> Column:
    mask = np.ones(n, bool)
    if spec.type == "int":
        return Column(np.zeros(n, np.int64), mask)
    if spec.type == "float":
        return Column(np.full(n, np.nan), mask)
    if spec.type == "bool":
        return Column(np.zeros(n, bool), mask)
    if spec.type == "timestamp":
        return Column(np.full(n, np.datetime64("NaT"), "datetime64[us]"), mask)
    return Column(np.full(n, None, dtype=object), mask)


def _numbers(spec: ColumnSpec, raw: list[Any]) -> tuple[Column, list[dict]]:
    n = len(raw)
    types = set(map(type, raw))
    problems: list[dict] = []
    mask = None
    if not types <= {int, float, _NONE}:
        bad = [i for i, v in enumerate(raw) if type(v) not in (int, float, _NONE)]
        problems.append(_problem(f"expected a number ({spec.type})", bad))
        raw = [v if type(v) in (int, float) else None for v in raw]
        types = {int, float, _NONE}
    if _NONE in types:
        mask = np.fromiter((v is None for v in raw), bool, n)
        raw = [math.nan if v is None else v for v in raw]
    try:
        floats = np.array(raw, dtype=np.float64)
    except OverflowError:  # an int beyond float range
        floats = np.array([v if abs(v) < 1e308 else math.inf for v in raw], dtype=np.float64)
    present = ~np.isnan(floats)
    infinite = np.isinf(floats)
    if infinite.any():
        problems.append(_problem("value is out of range", np.flatnonzero(infinite)))
        floats[infinite] = np.nan
        present &= ~infinite
    if spec.type == "int":
        integral = np.zeros(n, bool)
        integral[present] = floats[present] == np.floor(floats[present])
        too_big = integral & (np.abs(floats) >= _INT_LIMIT)
        whole = integral & ~too_big
        not_whole = present & ~integral
        if not_whole.any():
            problems.append(_problem("expected a whole number (int)", np.flatnonzero(not_whole)))
        if too_big.any():
            problems.append(_problem("value is out of range", np.flatnonzero(too_big)))
        ints = np.zeros(n, np.int64)
        if float in types or not_whole.any() or too_big.any() or mask is not None:
            ints[whole] = floats[whole].astype(np.int64)
            # exact ints beyond 2**53 lose nothing: take them from the Python values
            big = np.flatnonzero(whole & (np.abs(floats) > 2**53))
            for i in big:
                ints[i] = int(raw[i]) if -_INT_LIMIT <= int(raw[i]) < _INT_LIMIT else 0
        else:
            try:
                ints = np.array(raw, dtype=np.int64)
            except OverflowError:
                over = [i for i, v in enumerate(raw) if not -_INT_LIMIT <= v < _INT_LIMIT]
                problems.append(_problem("value is out of range", over))
                ints = np.array([v if -_INT_LIMIT <= v < _INT_LIMIT else 0 for v in raw], dtype=np.int64)
        values: np.ndarray = ints
        compare = floats
    else:
        values = compare = floats
    problems += _range_problems(spec, compare, present)
    return Column(values, mask), problems


def _range_problems(spec: ColumnSpec, values: np.ndarray, present: np.ndarray) -> list[dict]:
    problems = []
    with np.errstate(invalid="ignore"):
        if spec.min is not None:
            below = present & (values < spec.min)
            if below.any():
                problems.append(_problem(f"value is below the minimum {spec.min}", np.flatnonzero(below)))
        if spec.max is not None:
            above = present & (values > spec.max)
            if above.any():
                problems.append(_problem(f"value is above the maximum {spec.max}", np.flatnonzero(above)))
    if spec.values is not None:
        allowed = np.array(
            [float(v) for v in spec.values if isinstance(v, int | float) and not isinstance(v, bool)]
        )
        outside = present & ~np.isin(values, allowed)
        if outside.any():
            problems.append(_problem(f"value is not one of {list(spec.values)}", np.flatnonzero(outside)))
    return problems


def _bools(raw: list[Any]) -> tuple[Column, list[dict]]:
    n = len(raw)
    problems: list[dict] = []
    types = set(map(type, raw))
    if not types <= {bool, _NONE}:
        bad = [i for i, v in enumerate(raw) if type(v) not in (bool, _NONE)]
        problems.append(_problem("expected true or false (bool)", bad))
        raw = [v if type(v) is bool else None for v in raw]
        types.add(_NONE)
    mask = np.fromiter((v is None for v in raw), bool, n) if _NONE in types else None
    values = np.array([bool(v) for v in raw], dtype=bool)
    return Column(values, mask), problems


def _strings(spec: ColumnSpec, raw: list[Any], regex: re.Pattern | None) -> tuple[Column, list[dict]]:
    n = len(raw)
    problems: list[dict] = []
    types = set(map(type, raw))
    if not types <= {str, _NONE}:
        # a category whose values are numbers in YAML (values: [1, 2]) is stored as their text
        if spec.type == "category":
            raw = [str(v) if type(v) in (int, float) else v for v in raw]
        bad = [i for i, v in enumerate(raw) if type(v) not in (str, _NONE)]
        if bad:
            problems.append(_problem("expected a string", bad))
            raw = [v if type(v) is str else None for v in raw]
        types = set(map(type, raw))
    values = np.array(raw, dtype=object) if n else np.empty(0, dtype=object)
    mask = None
    if _NONE in types:
        mask = values == None  # noqa: E711 (elementwise: numpy's object comparison, one C loop)
    # each check first in one C-level pass over the values; the loop that names the rows only on a failure
    if spec.values is not None:
        allowed = {str(v) for v in spec.values}
        if not set(raw) <= allowed | {None}:
            bad = [i for i, v in enumerate(raw) if v is not None and v not in allowed]
            problems.append(_problem(f"value is not one of {list(spec.values)}", bad))
    if spec.max_length is not None and max(map(len, filter(None, raw)), default=0) > spec.max_length:
        bad = [i for i, v in enumerate(raw) if v is not None and len(v) > spec.max_length]
        problems.append(_problem(f"value is longer than max_length {spec.max_length}", bad))
    if regex is not None:
        bad = [i for i, v in enumerate(raw) if v is not None and regex.search(v) is None]
        if bad:
            problems.append(_problem(f"value does not match regex {spec.regex!r}", bad))
    return Column(values, mask), problems


def _timestamps(raw: list[Any]) -> tuple[Column, list[dict]]:
    n = len(raw)
    problems: list[dict] = []
    types = set(map(type, raw))
    if not types <= {str, _NONE}:
        bad = [i for i, v in enumerate(raw) if type(v) not in (str, _NONE)]
        problems.append(_problem("expected an ISO 8601 timestamp string", bad))
        raw = [v if type(v) is str else None for v in raw]
    values = parse_timestamps(raw)
    nat = np.isnat(values)
    if not nat.any():  # the common case: every value parsed
        return Column(values, None), problems
    present = np.fromiter((v is not None and v != "" for v in raw), bool, n)
    unparsed = present & nat
    if unparsed.any():
        problems.append(_problem("not an ISO 8601 timestamp", np.flatnonzero(unparsed)))
    return Column(values, nat), problems


# the spelling clients send most (naive, to the second, 'T'): numpy parses it in ~0.5 us a value where
# Arrow's cast costs ~25 us a call; anything else (offsets, fractions, nulls, a bad date) takes Arrow's path
_PLAIN_TIMESTAMPS = re.compile(
    r"(?:\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])T(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d\n)+"
)


def parse_timestamps(raw: list[str | None]) -> np.ndarray:
    """ISO 8601 text -> datetime64[us] naive UTC (NaT for null or unparseable), the ingest grammar."""
    if raw and all(type(v) is str for v in raw) and _PLAIN_TIMESTAMPS.fullmatch("\n".join(raw) + "\n"):
        try:
            return np.array(raw, dtype="datetime64[us]")
        except ValueError:  # a day the month lacks (02-30): Arrow's path decides, as before
            pass
    import pyarrow as pa

    try:
        # the common spelling (no offset) in one C++ cast
        return np.asarray(
            pa.array(raw, type=pa.string()).cast(pa.timestamp("us")).to_numpy(zero_copy_only=False)
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    import pandas as pd

    from loopline.data.validation.coerce import coerce_column

    typed, _ = coerce_column(pd.Series(raw, dtype=object), _TIMESTAMP_SPEC)
    return typed.to_numpy(dtype="datetime64[us]")


_TIMESTAMP_SPEC = ColumnSpec(name="timestamp", type="timestamp", nullable=True)


def concat_rows(parts: list[TypedRows]) -> TypedRows:
    """Rows of several requests as one batch (the micro-batcher's model input)."""
    if len(parts) == 1:
        return parts[0]
    columns: dict[str, Column] = {}
    for name in parts[0].columns:
        pieces = [p.columns[name] for p in parts]
        values = np.concatenate([c.values for c in pieces])
        if all(c.mask is None for c in pieces):
            mask = None
        else:
            mask = np.concatenate([c.mask if c.mask is not None else np.zeros(len(c), bool) for c in pieces])
        columns[name] = Column(values, mask)
    return TypedRows(columns, sum(p.n_rows for p in parts))


def slice_rows(rows: TypedRows, start: int, stop: int) -> TypedRows:
    """Rows start..stop-1 (views, no copy): one model call's share of a checked batch."""
    columns = {
        name: Column(c.values[start:stop], None if c.mask is None else c.mask[start:stop])
        for name, c in rows.columns.items()
    }
    numbers = None if rows.numbers is None else (rows.numbers[0], rows.numbers[1][:, start:stop])
    return TypedRows(columns, stop - start, numbers)


def to_frame(rows: TypedRows):
    """The rows as a pandas DataFrame with nullable dtypes (for the pandas transform path and the pyfunc)."""
    import pandas as pd

    data = {}
    for name, col in rows.columns.items():
        if col.values.dtype == np.int64:
            data[name] = pd.arrays.IntegerArray(
                col.values, col.mask if col.mask is not None else np.zeros(len(col), bool)
            )
        elif col.values.dtype == bool and col.mask is not None:
            data[name] = pd.arrays.BooleanArray(col.values, col.mask)
        else:
            data[name] = col.values
    return pd.DataFrame(data, index=pd.RangeIndex(rows.n_rows))
