"""Type coercion, the first check of the validation gate: raw values in, typed columns plus failures out.

Sources hand over text (CSV, JSON lines, parquet written as text) or already typed columns (parquet). Each
contract type has one grammar, so the same value gets the same verdict whatever file or chunk it came in:

- every type: null, and the empty string (CSV cannot tell "" from a missing value, so "" is null everywhere)
- float: `[+-]?digits[.digits][e[+-]digits]`, `inf`/`infinity`/`nan` in any case, surrounding blanks ignored.
  `nan` is null; `inf` parses (the suite's finite check rejects it).
- int: `[+-]?digits`, and a float spelling of a whole number below 2**53 ("3.0", "1e3"): pandas writes an int
  column that holds nulls as floats, so "3.0" is a common honest spelling of 3. "3.5", hex and overflow fail.
- bool: true/false/1/0, any case.
- timestamp: ISO 8601 (what pyarrow or pandas' `format="ISO8601"` reads); an offset is converted to UTC, a
  naive value is taken as UTC; stored as naive UTC microseconds.
- string/category: the text as received (no trimming).

Typed output: int -> Int64 (int64 when a reader typed the column, so it holds no nulls), float -> float64,
bool -> boolean, string/category -> string, timestamp -> datetime64[us]; a value that fails to parse becomes
null and is reported in `type_failures`.
The grammars run in pyarrow (C++): a column that casts cleanly costs one cast; only a column with a bad value
pays for the regex that finds it (the float regex accepts exactly what pyarrow's parser accepts).
"""

from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from loopline.data.contracts import ColumnSpec, Contract

FLOAT_PATTERN = r"^[+-]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|(?i:inf|infinity|nan))$"
INT_PATTERN = r"^[+-]?[0-9]+$"
NAIVE_TIMESTAMP_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,6})?)?$"
_FLOAT_RE = re.compile(FLOAT_PATTERN)
BOOL_TRUE = ("true", "1")
BOOL_FALSE = ("false", "0")
# floats represent every integer exactly up to 2**53; beyond that "1e20" would not be the int it looks like
MAX_EXACT_FLOAT_INT = 2**53
TYPED_DTYPES = {
    "int": "Int64",
    "float": "float64",
    "bool": "boolean",
    "string": "string",
    "category": "string",
    "timestamp": "datetime64[us]",
}


class CoercedChunk(NamedTuple):
    frame: pd.DataFrame  # typed per contract; unparseable values are null
    type_failures: dict[str, np.ndarray]  # column -> bool mask of values that did not parse


def coerce_chunk(chunk: pd.DataFrame | pa.Table, contract: Contract) -> CoercedChunk:
    """Parse every contract column of `chunk` to its contract type (see the module docstring)."""
    typed: dict[str, pd.Series] = {}
    failures: dict[str, np.ndarray] = {}
    for name, spec in contract.columns.items():
        values = chunk.column(name) if isinstance(chunk, pa.Table) else chunk[name]
        typed[name], failures[name] = coerce_column(values, spec)
    return CoercedChunk(pd.DataFrame(typed, index=pd.RangeIndex(len(chunk))), failures)


def coerce_column(
    values: pd.Series | pa.Array | pa.ChunkedArray, spec: ColumnSpec
) -> tuple[pd.Series, np.ndarray]:
    """One column: (typed Series on a fresh RangeIndex, bool mask of values that failed to parse).
    Arrow text is parsed as it is; other Arrow types go through pandas like a typed reader's columns."""
    n = len(values)
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
            text = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
            return _coerce_text(text, spec, n)
        values = values.to_pandas()
    fast = _coerce_typed(values, spec)
    if fast is not None:
        return fast
    return _coerce_text(_to_arrow_text(values), spec, n)


def _coerce_text(text: pa.Array, spec: ColumnSpec, n: int) -> tuple[pd.Series, np.ndarray]:
    if spec.type in ("string", "category"):
        text = _empty_to_null(text)
        return pd.Series(pd.arrays.ArrowStringArray(text.cast(pa.large_string())), dtype="string"), np.zeros(
            n, bool
        )
    parse = {"float": _parse_float, "int": _parse_int, "bool": _parse_bool, "timestamp": _parse_timestamp}[
        spec.type
    ]
    return parse(text)


def _normalise(text: pa.Array) -> pa.Array:
    """Blanks around a number, bool or timestamp do not count; an empty value is null."""
    return _empty_to_null(pc.utf8_trim_whitespace(text))


# -- typed input ---------------------------------------------------------------------------------------
def _coerce_typed(values: pd.Series, spec: ColumnSpec) -> tuple[pd.Series, np.ndarray] | None:
    """Fast paths for columns a reader already typed; None: treat the column as text."""
    dtype = values.dtype
    n = len(values)
    no_failures = np.zeros(n, bool)
    is_bool = pd.api.types.is_bool_dtype(dtype)
    is_number = pd.api.types.is_numeric_dtype(dtype) and not is_bool
    if spec.type == "float" and is_number:
        if dtype == np.float64:
            return pd.Series(values.to_numpy(copy=False)), no_failures
        return pd.Series(values.to_numpy(dtype=np.float64, na_value=np.nan)), no_failures
    if spec.type == "int" and pd.api.types.is_integer_dtype(dtype):
        if isinstance(dtype, np.dtype):  # numpy ints hold no nulls: stay int64, no copy
            return pd.Series(values.to_numpy(dtype=np.int64, copy=False)), no_failures
        return values.astype("Int64").reset_index(drop=True), no_failures
    if spec.type == "int" and pd.api.types.is_float_dtype(dtype):
        return _floats_to_int(values.to_numpy(dtype=np.float64, na_value=np.nan))
    if spec.type == "bool" and is_bool:
        return values.astype("boolean").reset_index(drop=True), no_failures
    if spec.type == "timestamp" and pd.api.types.is_datetime64_any_dtype(dtype):
        stamps = pd.Series(values.to_numpy() if dtype.kind == "M" else values.array)
        if isinstance(stamps.dtype, pd.DatetimeTZDtype):
            stamps = stamps.dt.tz_convert("UTC").dt.tz_localize(None)
        return stamps.astype("datetime64[us]").reset_index(drop=True), no_failures
    return None  # text, or a type that must be read as text (numbers for a string column ...)


def _to_arrow_text(values: pd.Series) -> pa.Array:
    """The column as an arrow string array; non-string objects (numbers, timestamps) as their str()."""
    if pd.api.types.is_string_dtype(values.dtype) and values.dtype != object:
        return pa.array(values.array)
    raw = values.to_numpy(dtype=object)
    try:
        return pa.array(raw, type=pa.string(), from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        # mixed objects (a frame assembled in Python): text of each non-null value
        text = [None if _is_missing(v) else v if isinstance(v, str) else str(v) for v in raw]
        return pa.array(text, type=pa.string())


def _is_missing(value: object) -> bool:
    return value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and value != value)


def _empty_to_null(text: pa.Array) -> pa.Array:
    empty = pc.equal(pc.binary_length(text), 0)
    if not pc.any(empty).as_py():
        return text
    return pc.if_else(empty, pa.scalar(None, text.type), text)


def _failures(text: pa.Array, ok: pa.Array) -> np.ndarray:
    """Values present in the text but not accepted by the grammar."""
    bad = pc.and_(pc.is_valid(text), pc.invert(ok))
    return np.asarray(pc.fill_null(bad, False).to_numpy(zero_copy_only=False), dtype=bool)


def _keep(text: pa.Array, ok: pa.Array) -> pa.Array:
    return pc.if_else(pc.fill_null(ok, False), text, pa.scalar(None, text.type))


# -- grammars --------------------------------------------------------------------------------------------
def _parse_float(text: pa.Array) -> tuple[pd.Series, np.ndarray]:
    # fast path: one cast of the text as received. It fails on "", blanks and bad values alike; then the
    # grammar (in RE2) sorts the values it accepts as they are from the few left, which Python looks at
    # one by one (blanks around a number, "" and the truly bad ones)
    n = len(text)
    failed = np.zeros(n, bool)
    try:
        return pd.Series(_floats(pc.cast(text, pa.float64()))), failed
    except pa.ArrowInvalid:
        pass
    ok = pc.fill_null(pc.match_substring_regex(text, FLOAT_PATTERN), False)
    values = _floats(pc.cast(_keep(text, ok), pa.float64()))
    for i, raw in _leftovers(text, ok):
        stripped = raw.strip()
        if not stripped:
            continue  # "" is null
        if _FLOAT_RE.fullmatch(stripped):
            values[i] = float(stripped)
        else:
            failed[i] = True
    # nan is null for every check (pandas and GX treat NaN as missing)
    return pd.Series(values), failed


def _floats(parsed: pa.Array) -> np.ndarray:
    return np.array(parsed.to_numpy(zero_copy_only=False), dtype=np.float64)


def _leftovers(text: pa.Array, ok: pa.Array) -> list[tuple[int, str]]:
    """(position, value) of the non-null values the vectorised grammar did not accept."""
    rest = np.flatnonzero(_failures(text, ok))
    if not rest.size:
        return []
    return list(zip(rest.tolist(), text.take(pa.array(rest)).to_pylist(), strict=True))


def _parse_int(text: pa.Array) -> tuple[pd.Series, np.ndarray]:
    n = len(text)
    # fast path: arrow's int parser reads `-?digits` and also hex (`0x1F`), which the grammar refuses
    if not pc.any(pc.match_substring(text, "x", ignore_case=True)).as_py():
        try:
            return _arrow_ints(pc.cast(text, pa.int64())), np.zeros(n, bool)
        except pa.ArrowInvalid:
            pass
    text = _normalise(text)
    is_int = pc.fill_null(pc.match_substring_regex(text, INT_PATTERN), False)
    ints = _keep(text, is_int)
    try:
        out = _arrow_ints(pc.cast(ints, pa.int64()))
        overflow = np.zeros(n, bool)
    except pa.ArrowInvalid:  # a digit string beyond int64
        out, overflow = _parse_big_ints(ints)
    failed = _failures(text, is_int) | overflow
    rest = np.flatnonzero(failed & ~overflow)
    if rest.size:
        # not plain digits: a float spelling of a whole number ("3.0", "1e3") is still an int
        sub = text.take(pa.array(rest))
        ok = pc.fill_null(pc.match_substring_regex(sub, FLOAT_PATTERN), False)
        as_float = pc.cast(_keep(sub, ok), pa.float64()).to_numpy(zero_copy_only=False)
        whole, whole_failed = _floats_to_int(np.asarray(as_float, dtype=np.float64))
        good = ~whole_failed & ~np.isnan(as_float)
        out = out.copy()
        out.iloc[rest[good]] = whole[good].to_numpy()
        failed[rest[good]] = False
    return out, failed


def _arrow_ints(parsed: pa.Array) -> pd.Series:
    values = np.asarray(pc.fill_null(parsed, 0).to_numpy(zero_copy_only=False), dtype=np.int64)
    missing = np.asarray(pc.is_null(parsed).to_numpy(zero_copy_only=False), dtype=bool)
    return pd.Series(pd.arrays.IntegerArray(values, missing))


def _parse_big_ints(ints: pa.Array) -> tuple[pd.Series, np.ndarray]:
    """Digit strings one by one (only when some overflow int64): overflow is a type failure."""
    lo, hi = np.iinfo(np.int64).min, np.iinfo(np.int64).max
    values = []
    overflow = np.zeros(len(ints), bool)
    for i, text in enumerate(ints.to_pylist()):
        if text is None:
            values.append(None)
            continue
        number = int(text)
        if lo <= number <= hi:
            values.append(number)
        else:
            values.append(None)
            overflow[i] = True
    return pd.Series(pd.array(values, dtype="Int64")), overflow


def _floats_to_int(values: np.ndarray) -> tuple[pd.Series, np.ndarray]:
    """Whole, finite floats up to 2**53 become ints; other non-null floats are type failures."""
    present = ~np.isnan(values)
    whole = present & np.isfinite(values) & (np.abs(values) < MAX_EXACT_FLOAT_INT)
    whole[whole] = values[whole] == np.floor(values[whole])
    ints = np.zeros(len(values), np.int64)
    ints[whole] = values[whole].astype(np.int64)
    return pd.Series(pd.arrays.IntegerArray(ints, ~whole)), present & ~whole


def _parse_bool(text: pa.Array) -> tuple[pd.Series, np.ndarray]:
    text = _normalise(text)
    lower = pc.utf8_lower(text)
    true = pc.fill_null(pc.is_in(lower, pa.array(BOOL_TRUE)), False)
    false = pc.fill_null(pc.is_in(lower, pa.array(BOOL_FALSE)), False)
    ok = pc.or_(true, false)
    values = np.asarray(true.to_numpy(zero_copy_only=False), dtype=bool)
    present = np.asarray(ok.to_numpy(zero_copy_only=False), dtype=bool)
    return pd.Series(pd.arrays.BooleanArray(values, ~present)), _failures(text, ok)


def _parse_timestamp(text: pa.Array) -> tuple[pd.Series, np.ndarray]:
    n = len(text)
    failed = np.zeros(n, bool)
    try:  # fast path: arrow reads naive ISO 8601 ("2024-01-01T00:00:00", "2024-01-01 00:00")
        return pd.Series(_stamps(pc.cast(text, pa.timestamp("us")))), failed
    except pa.ArrowInvalid:
        pass
    ok = pc.fill_null(pc.match_substring_regex(text, NAIVE_TIMESTAMP_PATTERN), False)
    try:
        result = _stamps(pc.cast(_keep(text, ok), pa.timestamp("us")))
    except pa.ArrowInvalid:  # shaped like a timestamp but not one (month 13 ...): every value the slow way
        ok = pa.array(np.zeros(n, bool))
        result = np.full(n, np.datetime64("NaT"), dtype="datetime64[us]")
    # the rest (offsets, dates, odd precision, blanks, garbage): pandas' ISO 8601 reader, then arrow per value
    rest = [(i, raw.strip()) for i, raw in _leftovers(text, ok)]
    rest = [(i, value) for i, value in rest if value]  # "" is null
    if rest:
        stamps = pd.to_datetime(
            pd.Series([v for _, v in rest], dtype=object), format="ISO8601", utc=True, errors="coerce"
        )
        parsed = stamps.dt.tz_convert(None).astype("datetime64[us]").to_numpy()
        for (i, value), stamp in zip(rest, parsed, strict=True):
            if np.isnat(stamp):
                stamp = _arrow_timestamp(value)
            if stamp is None or np.isnat(stamp):
                failed[i] = True
            else:
                result[i] = stamp
    return pd.Series(result), failed


def _stamps(parsed: pa.Array) -> np.ndarray:
    return np.array(parsed.to_numpy(zero_copy_only=False), dtype="datetime64[us]")


def _arrow_timestamp(text: str) -> np.datetime64 | None:
    for target in (pa.timestamp("us"), pa.timestamp("us", tz="UTC")):
        try:
            value = pc.cast(pa.array([text]), target).cast(pa.int64())[0].as_py()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        return np.datetime64(value, "us")
    return None
