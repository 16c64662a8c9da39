"""Draft a dataset contract from a sample file (`loopline init --from SAMPLE`): a commented YAML file that a
person reads and edits, and that ingests its own sample with no quarantined row.

Every inference uses the validation gate's own parsers (`loopline.data.validation.coerce`), so a type is
drafted only when the gate would parse every value of the sample as that type. The whole sample is read
(held in memory: it is a sample). The rules, also written into the draft's header:

- type: int when every value parses as an int and is spelled as one (`-12`, not `3.0`: a float spelling
  drafts float, which accepts it too); else bool (true/false/1/0); else float (finite; `nan` and empty are
  null; a column Parquet stores as floating point is always float); else timestamp (ISO 8601); else string.
  A string column with at most CATEGORY_MAX_VALUES distinct values, each seen at least
  CATEGORY_MIN_ROWS_PER_VALUE times on average, is a category with those `values`.
- nullable: the column holds a null (or an empty value, which the gate reads as null) in the sample.
- min/max (int and float, not the id): the observed range widened by MARGIN of its width on each side, never
  across zero for a column whose values are all >= 0 (or all <= 0); ints rounded outward, floats outward to
  3 significant digits of the width.
- label: --label, else the column named label/target/y/class/outcome. Task: bool or two distinct values ->
  binary; 3..MAX_CLASSES distinct ints or strings -> multiclass; float or more ints -> regression. A
  binary/multiclass label gets `values` (its classes).
- id: --id (must be unique and non-null), else the unique, non-null int or string column whose name looks
  most like an id (id, key, uuid, then *_id / *_key, then the first in file order). No column qualifies: an
  error names every column and why it was rejected. An id is never invented.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import yaml

from loopline.data.contracts import ColumnSpec, Contract, parse_contract
from loopline.data.validation.coerce import INT_PATTERN, coerce_column
from loopline.errors import ConfigError, SourceError
from loopline.storage import sources
from loopline.storage.files import atomic_write_text
from loopline.storage.lake import Lake

MARGIN = 0.10  # min/max: the observed range widened by this fraction of its width, each side
CATEGORY_MAX_VALUES = 20  # a string column with at most this many distinct values ...
CATEGORY_MIN_ROWS_PER_VALUE = 2  # ... each seen this often on average, is a category
MAX_CLASSES = 20  # an int/string label with up to this many distinct values is multiclass
LABEL_NAMES = ("label", "target", "y", "class", "outcome")
QUARANTINE_MAX_FRACTION = 0.05
_READ_ROWS = 100_000  # rows per chunk read (the chunks are joined: a sample is held in memory)
_PROBE = 64  # distinct values tried first for the (slow on failure) timestamp parser
_INT64 = (-(2**63), 2**63 - 1)
_MAX_FLOAT = float(np.finfo(np.float64).max)
_ID_NAMES = ("id", "key", "uuid")
_LINE_BREAK = re.compile("[\r\n\x85\u2028\u2029]")  # what YAML reads as the end of a line
_ID_SUFFIX = re.compile(r"(?:[_\-. ](?:id|key|uuid)|[a-z0-9](?:Id|ID|Key|Uuid))$")


@dataclass
class ColumnDraft:
    name: str
    type: str
    spec: dict[str, Any]  # the contract entry, e.g. {"type": "float", "min": 0.0, "max": 31.4}
    comment: str  # what was observed, for the person who edits the draft


@dataclass
class Draft:
    dataset: str
    sample: str
    rows: int
    id: str
    id_reason: str
    label: str
    task: str
    task_reason: str
    columns: list[ColumnDraft]
    text: str  # the commented YAML
    contract: Contract = field(repr=False)

    @property
    def columns_by_type(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for col in self.columns:
            out.setdefault(col.type, []).append(col.name)
        return out

    def summary(self, out: str | None = None) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "sample": self.sample,
            "rows": self.rows,
            "id": self.id,
            "id_reason": self.id_reason,
            "label": self.label,
            "task": self.task,
            "task_reason": self.task_reason,
            "columns_by_type": self.columns_by_type,
            "out": out,
        }


@dataclass
class _Profile:
    """One column of the sample, parsed by the gate's parser as its inferred type."""

    name: str
    type: str
    typed: pd.Series  # the whole column as the gate types it (nulls included)
    note: str | None = None

    @property
    def nulls(self) -> int:
        return int(self.typed.isna().sum())

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


# -- the entry points ----------------------------------------------------------------------------------
def draft_contract(
    sample: str | Path,
    *,
    name: str | None = None,
    label: str | None = None,
    id_column: str | None = None,
    lake: Lake | None = None,
) -> Draft:
    """Read a CSV, Parquet or JSON-lines sample (local or s3://) and draft its contract.
    Raises ConfigError (no label, no usable id, ...) or SourceError (unreadable sample)."""
    sample = str(sample)
    dataset = _dataset_name(sample, name)
    table, declared_float = _read_sample(sample, lake)
    rows = table.num_rows
    if rows == 0:
        raise ConfigError(f"{sample}: the sample has a header but no rows; a draft needs rows to look at")
    profiles = {
        col: _profile(col, table[col], declared_float=col in declared_float) for col in table.column_names
    }
    label_col = _pick_label(profiles, label, sample)
    task, classes, task_reason = _infer_task(profiles[label_col])
    id_col, id_reason = _pick_id(profiles, id_column, label_col, sample)
    columns = [
        _column_draft(p, is_id=p.name == id_col, is_label=p.name == label_col, classes=classes)
        for p in profiles.values()
    ]
    data = {
        "dataset": dataset,
        "id": id_col,
        "label": label_col,
        "task": task,
        "columns": {c.name: c.spec for c in columns},
        "quarantine_max_fraction": QUARANTINE_MAX_FRACTION,
    }
    header = _header(sample, rows, id_col, id_reason, task, task_reason)
    text = _render(data, columns, header)
    if yaml.safe_load(text) != data:  # the text says exactly what was inferred (quoting, floats)
        raise AssertionError("the drafted YAML does not read back as the draft; this is a bug")
    contract = parse_contract(data)
    return Draft(
        dataset=dataset,
        sample=sample,
        rows=rows,
        id=id_col,
        id_reason=id_reason,
        label=label_col,
        task=task,
        task_reason=task_reason,
        columns=columns,
        text=text,
        contract=contract,
    )


def default_path(dataset: str) -> Path:
    return Path("contracts") / f"{dataset}.yaml"


def write_draft(draft: Draft, out: str | Path | None = None, *, force: bool = False) -> Path:
    """Write the draft (default contracts/<dataset>.yaml); an existing file only with force."""
    path = Path(out) if out is not None else default_path(draft.dataset)
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; name the contract file to write with --out")
    if path.exists() and not force:
        raise ConfigError(f"{path} already exists; pass --force to overwrite it, or --out to write elsewhere")
    atomic_write_text(path, draft.text)
    return path


# -- reading -------------------------------------------------------------------------------------------
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


# -- one column ------------------------------------------------------------------------------------------
def _profile(name: str, text: pa.ChunkedArray, *, declared_float: bool) -> _Profile:
    ctype, note = _infer_type(name, text, declared_float)
    typed, failed = coerce_column(_as_gate_input(text), ColumnSpec(name=name, type=ctype))
    if failed.any():  # the distinct values all parsed, so every row does
        raise AssertionError(f"column {name!r}: a value failed as {ctype} after its distinct values parsed")
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
    return "string", note


def _parse(name: str, values: pd.Series, ctype: str) -> pd.Series | None:
    """The values parsed as `ctype` by the gate's parser; None when one of them does not parse."""
    typed, failed = coerce_column(values, ColumnSpec(name=name, type=ctype))
    return None if failed.any() else typed


def _spelled_as_ints(distinct: pa.Array) -> bool:
    trimmed = pc.utf8_trim_whitespace(distinct)
    ok = pc.or_(pc.match_substring_regex(trimmed, INT_PATTERN), pc.equal(pc.binary_length(trimmed), 0))
    return bool(pc.all(ok).as_py())


# -- the label and the task ------------------------------------------------------------------------------
def _pick_label(profiles: dict[str, _Profile], label: str | None, sample: str) -> str:
    if label is not None:
        if label not in profiles:
            raise ConfigError(
                f"--label {label!r} is not a column of {sample}; its columns: {_names(profiles)}"
            )
        return label
    by_name = {c.lower(): c for c in reversed(list(profiles))}
    found = [by_name[n] for n in LABEL_NAMES if n in by_name]
    if not found:
        raise ConfigError(
            f"{sample}: no column is named like a label ({', '.join(LABEL_NAMES)}); pass --label COL to say which "
            f"column the model predicts (columns: {_names(profiles)})"
        )
    if len(found) > 1:
        raise ConfigError(
            f"{sample}: several columns could be the label ({', '.join(found)}); pass --label COL"
        )
    return found[0]


def _infer_task(p: _Profile) -> tuple[str, list[Any] | None, str]:
    """(task, classes or None, the reason in words) for the label column."""
    where = f"label {p.name!r}"
    if p.nulls:
        raise ConfigError(
            f"{where} is empty in {p.nulls} row(s) of the sample; a label cannot be null. Drop those rows from "
            "the sample, or pass --label for another column"
        )
    if p.type == "timestamp":
        raise ConfigError(
            f"{where} holds timestamps; a label is a class or a number. Pass --label for another column"
        )
    if p.type == "bool":
        return "binary", [False, True], f"{where} is bool"
    classes = sorted(p.present.unique().tolist())
    kind = {"int": "ints", "float": "floats", "bool": "bools"}.get(p.type, "strings")
    if len(classes) == 1:
        raise ConfigError(
            f"{where} has one value ({classes[0]!r}) in the sample; a model needs at least two. Use a sample "
            "with every class, or pass --label for another column"
        )
    if len(classes) == 2:
        return "binary", classes, f"{where} has 2 distinct {kind}"
    if p.type in ("int", "string", "category") and len(classes) <= MAX_CLASSES:
        return "multiclass", classes, f"{where} has {len(classes)} distinct {kind} (<= {MAX_CLASSES})"
    if p.type in ("int", "float"):
        more = f"{len(classes)} distinct ints (> {MAX_CLASSES})" if p.type == "int" else "float"
        return "regression", None, f"{where} is {more}"
    raise ConfigError(
        f"{where} has {len(classes)} distinct strings: more than {MAX_CLASSES} classes, and not a number to "
        "regress on. Pass --label for another column, or draft with a coarser label"
    )


# -- the id ------------------------------------------------------------------------------------------------
def _pick_id(
    profiles: dict[str, _Profile], id_column: str | None, label: str, sample: str
) -> tuple[str, str]:
    if id_column is not None:
        if id_column not in profiles:
            raise ConfigError(
                f"--id {id_column!r} is not a column of {sample}; its columns: {_names(profiles)}"
            )
        if id_column == label:
            raise ConfigError(
                f"--id {id_column!r} is also the label; the id and the label are different columns"
            )
        p = profiles[id_column]
        problems = []
        if p.nulls:
            problems.append(f"{p.nulls} null value(s)")
        if p.duplicates:
            problems.append(f"{p.duplicates} duplicate value(s) (rows repeating an earlier {p.type} id)")
        if problems:
            raise ConfigError(
                f"--id {id_column!r} is not a usable id in {sample}: {' and '.join(problems)}; an id is unique "
                "and never null (the gate quarantines the rest). Fix the sample, or name another column"
            )
        return id_column, "given with --id; unique and non-null in the sample"
    rejected: dict[str, list[str]] = {}
    candidates: list[str] = []
    for name, p in profiles.items():
        if name == label:
            continue
        if p.type not in ("int", "string"):
            rejected.setdefault("not int or string", []).append(f"{name} ({p.type})")
        elif p.nulls:
            rejected.setdefault("has nulls", []).append(f"{name} ({p.nulls} null)")
        elif p.duplicates:
            rejected.setdefault("not unique", []).append(f"{name} ({p.duplicates} duplicate)")
        else:
            candidates.append(name)
    if not candidates:
        why = "; ".join(f"{_short(names)}: {reason}" for reason, names in rejected.items())
        raise ConfigError(
            f"{sample}: no column can be the id (unique, non-null, int or string). Rejected: "
            f"{why or 'no column besides the label'}. Add an id column to the data (e.g. a row number assigned "
            "once, at the source), or pass --id COL to name one"
        )
    best = min(candidates, key=lambda c: (_id_rank(c), candidates.index(c)))
    others = [c for c in candidates if c != best]
    also = f"; also unique: {_short(others)}" if others else ""
    if _id_rank(best) < 2:
        return best, f"named like an id, unique and non-null in the sample{also}"
    return best, f"the first unique, non-null int/string column (none is named like an id): check it{also}"


def _id_rank(name: str) -> int:
    if name.lower() in _ID_NAMES:
        return 0
    return 1 if _ID_SUFFIX.search(name) or _ID_SUFFIX.search(name.lower()) else 2


# -- one column's contract entry ---------------------------------------------------------------------------
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


# -- the YAML text -----------------------------------------------------------------------------------------
def _header(sample: str, rows: int, id_col: str, id_reason: str, task: str, task_reason: str) -> list[str]:
    return [
        f"Drafted by `loopline init` from {_scalar(Path(sample).name)} ({rows} rows): a starting point to read "
        "and edit.",
        "Inferred with the validation gate's own parsers; this draft ingests its sample with no quarantined row.",
        f"  id: {_scalar(id_col)}, {id_reason}",
        f"  task: {task}, as {task_reason}",
        "  type: int, bool, float or timestamp where every value parses as that type (int: spelled as one),",
        f"    else string; a string column with <= {CATEGORY_MAX_VALUES} distinct values, each seen >= "
        f"{CATEGORY_MIN_ROWS_PER_VALUE}x on average, is a category",
        "  nullable: where the sample holds a null or empty value",
        f"  min/max: the observed range widened by {MARGIN:.0%} of its width on each side (ints rounded outward,",
        "    floats to 3 significant digits of the width), never across 0 when every value is >= 0 (or <= 0)",
        "The comment after each column says what the sample held.",
    ]


def _render(data: dict[str, Any], columns: list[ColumnDraft], header: list[str]) -> str:
    lines = [f"# {_comment(h)}" for h in header]
    lines += [f"{k}: {_scalar(data[k])}" for k in ("dataset", "id", "label", "task")]
    lines.append("columns:")
    keys = [f"{_scalar(c.name)}:" for c in columns]
    specs = [_flow(c.spec) for c in columns]
    key_width = min(max(map(len, keys)), 32)
    spec_width = min(max(map(len, specs)), 60)
    for key, spec, col in zip(keys, specs, columns, strict=True):
        lines.append(f"  {key:<{key_width}} {spec:<{spec_width}}  # {_comment(col.comment)}".rstrip())
    lines.append(
        f"quarantine_max_fraction: {_scalar(data['quarantine_max_fraction'])}"
        "   # more bad rows than this in a batch: the batch fails the gate"
    )
    return "\n".join(lines) + "\n"


def _flow(spec: dict[str, Any]) -> str:
    parts = []
    for key, value in spec.items():
        shown = (
            "[" + ", ".join(_scalar(v) for v in value) + "]" if isinstance(value, list) else _scalar(value)
        )
        parts.append(f"{key}: {shown}")
    return "{" + ", ".join(parts) + "}"


def _scalar(value: Any) -> str:
    """One YAML scalar that reads back as `value` (quoted where YAML would read it otherwise)."""
    kwargs = {"allow_unicode": True, "default_flow_style": True, "width": math.inf}
    text = yaml.safe_dump([value], **kwargs).strip()
    if _LINE_BREAK.search(text):  # a string with line breaks: escaped, on one line
        text = yaml.safe_dump([value], default_style='"', **kwargs).strip()
    return text[1:-1]


def _comment(text: str) -> str:
    """Comments hold only rendered scalars and our words; line breaks would end them."""
    return _LINE_BREAK.sub(" ", text)


def _show(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _names(profiles: dict[str, _Profile]) -> str:
    return _short(list(profiles))


def _short(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
