"""One column of the sample: read as the gate reads it, its type inferred with the gate's own parsers, and
its contract entry (nullable, the range widened by MARGIN, category values)."""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import yaml

from loopline.data.contracts import ColumnSpec
from loopline.data.validation.coerce import INT_PATTERN, coerce_column
from loopline.errors import ConfigError, SourceError
from loopline.storage import sources
from loopline.storage.lake import Lake

MARGIN = 0.10  # min/max: the observed range widened by this fraction of its width, each side


CATEGORY_MAX_VALUES = 20  # a string column with at most this many distinct values ...


CATEGORY_MIN_ROWS_PER_VALUE = 2  # ... each seen this often on average, is a category


QUARANTINE_MAX_FRACTION = 0.05


_READ_ROWS = 100_000  # rows per chunk read (the chunks are joined: a sample is held in memory)


_PROBE = 64  # distinct values tried first for the (slow on failure) timestamp parser
MAX_UNPARSED_SHARE = 0.01  # a numeric column may hold this share of stray values (drafted numeric, noted)


_INT64 = (-(2**63), 2**63 - 1)


_MAX_FLOAT = float(np.finfo(np.float64).max)


@dataclass
class ColumnDraft:
    name: str
    type: str
    spec: dict[str, Any]  # the contract entry, e.g. {"type": "float", "min": 0.0, "max": 31.4}
    comment: str  # what was observed, for the person who edits the draft


@dataclass
class _Profile:
    """One column of the sample, parsed by the gate's parser as its inferred type."""

    name: str
    type: str
    typed: pd.Series  # the whole column as the gate types it (nulls included)
    note: str | None = None
    unparsed: pd.Series | None = None  # rows whose value the type does not parse (a mostly numeric column)

    @property
    def nulls(self) -> int:
        bad = int(self.unparsed.sum()) if self.unparsed is not None else 0
        return int(self.typed.isna().sum()) - bad

    @property
    def present(self) -> pd.Series:
        return self.typed.dropna()

    @property
    def distinct(self) -> int:
        return int(self.present.nunique())

    @property
    def duplicates(self) -> int:
        """Rows whose value an earlier row already had (the gate would quarantine them as an id)."""
        return int(self.present.duplicated().sum())


def _dataset_name(sample: str, name: str | None) -> str:
    if name is not None:
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
            raise ConfigError(f"--name {name!r}: a dataset name is letters, digits, '_' or '-'")
        return name
    stem = Path(sample.rstrip("/")).stem
    return re.sub(r"[^A-Za-z0-9_\-]+", "_", stem).strip("_") or "dataset"


def _read_sample(sample: str, lake: Lake | None) -> tuple[pa.Table, set[str]]:
    """The whole sample as text (as the gate receives it), and the columns Parquet stores as floats."""
    import shutil

    workdir = sources.scratch_dir()
    try:
        src = sources.fetch(sample, lake or Lake.from_env(), workdir)
        if Path(src.local_path).is_dir():
            raise ConfigError(f"{sample} is a folder; a contract is drafted from one sample file")
        if not Path(src.local_path).exists():
            raise SourceError("no such file", file=sample)
        header = sources.read_header(src)
        repeated = sorted({c for c in header if header.count(c) > 1})
        if repeated:
            raise ConfigError(f"{sample}: repeated column name(s) {repeated}; the gate rejects such a file")
        tables = list(sources.read_tables(src, header, _READ_ROWS))
        declared_float: set[str] = set()
        if src.fmt == "parquet":
            import pyarrow.parquet as pq

            schema = pq.ParquetFile(src.local_path).schema_arrow
            declared_float = {f.name for f in schema if pa.types.is_floating(f.type)}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if not tables:
        return pa.table({c: pa.array([], pa.string()) for c in header}), declared_float
    table = pa.concat_tables(tables, promote_options="default")
    extra = [c for c in table.column_names if c not in header]
    if extra:  # JSON lines: the gate takes the columns from the first record
        raise ConfigError(
            f"{sample}: later records have key(s) {extra} that the first record lacks; the gate reads the "
            "columns from the first record, so give it every key (null where there is no value)"
        )
    return table.select(header), declared_float


def _as_gate_input(text: pa.Array | pa.ChunkedArray) -> pd.Series:
    """Text as the gate's coercion receives it (an Arrow table of text turned into pandas)."""
    return pa.table({"v": text}).to_pandas()["v"]


def _profile(name: str, text: pa.ChunkedArray, *, declared_float: bool) -> _Profile:
    ctype, note = _infer_type(name, text, declared_float)
    typed, failed = coerce_column(_as_gate_input(text), ColumnSpec(name=name, type=ctype))
    if failed.any():
        if ctype not in ("int", "float") or failed.mean() > MAX_UNPARSED_SHARE:
            raise AssertionError(
                f"column {name!r}: a value failed as {ctype} after its distinct values parsed"
            )
        return _Profile(name, ctype, typed, note, unparsed=pd.Series(failed, index=typed.index))
    if ctype == "string" and typed.notna().any():
        distinct = typed.dropna().nunique()
        if distinct <= CATEGORY_MAX_VALUES and distinct * CATEGORY_MIN_ROWS_PER_VALUE <= typed.notna().sum():
            ctype = "category"
    return _Profile(name, ctype, typed, note)


def _infer_type(name: str, text: pa.ChunkedArray, declared_float: bool) -> tuple[str, str | None]:
    """The first type (int, bool, float, timestamp) whose gate parser accepts every distinct value of the
    column and finds at least one value; else string."""
    distinct = pc.unique(text.combine_chunks()).drop_null()
    if len(distinct) == 0:
        return "string", "no value in the sample: the type is a guess"
    values = _as_gate_input(distinct)
    candidates = ("float",) if declared_float else ("int", "bool", "float", "timestamp")
    note = None
    for ctype in candidates:
        if (
            ctype == "timestamp"
            and len(values) > _PROBE
            and _parse(name, values.iloc[:_PROBE], ctype) is None
        ):
            continue
        typed = _parse(name, values, ctype)
        if typed is None or not typed.notna().any():
            continue
        if ctype == "int" and not _spelled_as_ints(distinct):
            continue
        if ctype == "float" and not np.isfinite(typed.dropna().to_numpy(dtype=np.float64)).all():
            note = "holds inf, which no float column accepts: drafted as string"
            continue
        return ctype, None
    return _mostly_numeric(name, text, values) or ("string", note)


def _mostly_numeric(name: str, text: pa.ChunkedArray, distinct: pd.Series) -> tuple[str, str] | None:
    """(int or float, a note naming the stray values) when all but a few rows (at most MAX_UNPARSED_SHARE)
    parse as that number type: a typo or an 'n/a' in a sample should not turn a numeric column into text
    (whose only feature would be its length). The gate then quarantines such rows, each with its reason."""
    for ctype in ("int", "float"):
        typed, failed = coerce_column(distinct, ColumnSpec(name=name, type=ctype))
        if not failed.any() or not typed.notna().any():
            continue
        if ctype == "int" and not _spelled_as_ints(pa.array(distinct[~failed].tolist(), pa.string())):
            continue
        if ctype == "float" and not np.isfinite(typed.dropna().to_numpy(dtype=np.float64)).all():
            continue
        stray = pa.array(distinct[failed].tolist(), pa.string())
        rows = pc.sum(pc.is_in(text, value_set=stray)).as_py() or 0
        if rows > MAX_UNPARSED_SHARE * max(1, len(text) - text.null_count):
            return None
        shown = ", ".join(repr(v) for v in stray.to_pylist()[:3]) + (", ..." if len(stray) > 3 else "")
        return ctype, (
            f"{rows} row(s) hold a value that is not {'an' if ctype == 'int' else 'a'} {ctype} ({shown}): "
            f"drafted as {ctype}, so the gate quarantines those rows; make it a string column if they are data"
        )
    return None


def _parse(name: str, values: pd.Series, ctype: str) -> pd.Series | None:
    """The values parsed as `ctype` by the gate's parser; None when one of them does not parse."""
    typed, failed = coerce_column(values, ColumnSpec(name=name, type=ctype))
    return None if failed.any() else typed


def _spelled_as_ints(distinct: pa.Array) -> bool:
    trimmed = pc.utf8_trim_whitespace(distinct)
    ok = pc.or_(pc.match_substring_regex(trimmed, INT_PATTERN), pc.equal(pc.binary_length(trimmed), 0))
    return bool(pc.all(ok).as_py())


def _column_draft(p: _Profile, *, is_id: bool, is_label: bool, classes: list[Any] | None) -> ColumnDraft:
    ctype = p.type
    classes = classes if is_label else None
    present = p.present
    notes: list[str] = []
    spec: dict[str, Any] = {"type": "category" if classes is not None and ctype == "string" else ctype}
    if p.nulls:
        spec["nullable"] = True
    if classes is not None:
        spec["values"] = [_plain(c) for c in classes]
        counts = Counter(present.tolist())
        shown = ", ".join(f"{_scalar(_plain(c))} ({counts.get(c, 0)})" for c in classes[:10])
        notes.append(f"label, classes (rows): {shown}" + (", ..." if len(classes) > 10 else ""))
    elif ctype in ("int", "float"):
        lo, hi = _plain(present.min()), _plain(present.max())
        notes.append(f"observed {_show(lo)}..{_show(hi)}, {p.distinct} distinct")
        if not is_id:
            spec["min"], spec["max"] = _widen(lo, hi, is_int=ctype == "int")
    elif ctype == "timestamp":
        notes.append(f"observed {present.min().isoformat()} .. {present.max().isoformat()}")
    elif ctype == "bool":
        trues = int(present.sum())
        notes.append(f"{trues} true, {len(present) - trues} false")
    elif ctype == "category":
        spec["values"] = sorted(present.unique().tolist())
        notes.append(f"{p.distinct} distinct in {len(present)} rows")
    elif len(present):
        notes.append(f"{p.distinct} distinct, max length {int(present.str.len().max())}")
    if is_id:
        notes.append("the id: unique")
    elif is_label and classes is None:
        notes.insert(0, "label")
    if p.nulls:
        notes.append(f"{p.nulls} null")
    if p.note:
        notes.append(p.note)
    return ColumnDraft(p.name, spec["type"], spec, "; ".join(notes))


def _plain(value: Any) -> Any:
    """numpy scalars as Python ones (YAML writes only those)."""
    return value.item() if isinstance(value, np.generic) else value


def _widen(lo: float, hi: float, *, is_int: bool) -> tuple[Any, Any]:
    """[lo, hi] widened by MARGIN of its width on each side (a constant column: of its magnitude, or 1),
    never across zero when all values are >= 0 (or <= 0)."""
    if is_int:
        lo, hi = int(lo), int(hi)
        width = hi - lo or abs(hi) or 1
        pad = math.ceil(MARGIN * width)
        new_lo, new_hi = lo - pad, hi + pad
        if lo >= 0:
            new_lo = max(new_lo, 0)
        if hi <= 0:
            new_hi = min(new_hi, 0)
        return max(new_lo, _INT64[0]), min(new_hi, _INT64[1])
    width = (hi - lo) or abs(hi) or 1.0
    pad = MARGIN * width
    new_lo, new_hi = lo - pad, hi + pad
    if lo >= 0:
        new_lo = max(new_lo, 0.0)
    if hi <= 0:
        new_hi = min(new_hi, 0.0)
    new_lo, new_hi = _round_out(new_lo, lo, width, down=True), _round_out(new_hi, hi, width, down=False)
    return max(new_lo, -_MAX_FLOAT), min(new_hi, _MAX_FLOAT)


def _round_out(value: float, bound: float, width: float, *, down: bool) -> float:
    """`value` rounded away from the data to 3 significant digits of the width; never past `bound`."""
    if not math.isfinite(value) or not math.isfinite(width) or width <= 0:
        return value
    exponent = math.floor(math.log10(width)) - 2
    step = 10.0**exponent
    if step == 0 or not math.isfinite(step):
        return value
    digits = max(0, -exponent)
    steps = round(value / step, 6)  # 60.8 / 0.1 is 607.9999...: not a step below 608
    rounded = round((math.floor if down else math.ceil)(steps) * step, digits)
    if (down and rounded > bound) or (not down and rounded < bound) or not math.isfinite(rounded):
        return value
    return rounded


_LINE_BREAK = re.compile("[\r\n\x85\u2028\u2029]")  # what YAML reads as the end of a line


def _scalar(value: Any) -> str:
    """One YAML scalar that reads back as `value` (quoted where YAML would read it otherwise)."""
    kwargs = {"allow_unicode": True, "default_flow_style": True, "width": math.inf}
    text = yaml.safe_dump([value], **kwargs).strip()
    if _LINE_BREAK.search(text):  # a string with line breaks: escaped, on one line
        text = yaml.safe_dump([value], default_style='"', **kwargs).strip()
    return text[1:-1]


def _show(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)
