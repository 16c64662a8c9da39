"""Draft a dataset contract from a sample file (`loopline init --from SAMPLE`): a commented YAML file that a
person reads and edits, and that ingests its own sample with no quarantined row (but the stray values below).

Every inference uses the validation gate's own parsers (`loopline.data.validation.coerce`), so a type is
drafted only when the gate would parse every value of the sample as that type. The whole sample is read
(held in memory: it is a sample). The rules, also written into the draft's header:

- type: int when every value parses as an int and is spelled as one (`-12`, not `3.0`: a float spelling
  drafts float, which accepts it too); else bool (true/false/1/0); else float (finite; `nan` and empty are
  null; a column Parquet stores as floating point is always float); else timestamp (ISO 8601); else int or
  float when all but MAX_UNPARSED_SHARE of its rows parse as one (the stray values, e.g. `n/a` or `12,5`, are
  named in the draft's comment, and the gate quarantines their rows); else string.
  A string column with at most CATEGORY_MAX_VALUES distinct values, each seen at least
  CATEGORY_MIN_ROWS_PER_VALUE times on average, is a category with those `values`.
- nullable: the column holds a null (or an empty value, which the gate reads as null) in the sample.
- min/max (int and float, not the id): the observed range widened by MARGIN of its width on each side, never
  across zero for a column whose values are all >= 0 (or all <= 0); ints rounded outward, floats outward to
  3 significant digits of the width.
- label: --label, else the column named label/target/y/class/outcome. Task: bool or two distinct values ->
  binary; 3..MAX_CLASSES distinct ints or strings -> multiclass; float or more ints -> regression. A
  binary/multiclass label gets `values` (its classes).
- id: --id (non-null, and unique but for at most MAX_UNPARSED_SHARE of rows repeating a value, which the
  gate quarantines), else the unique, non-null int or string column whose name looks
  most like an id (id, key, uuid, then *_id / *_key, then the first in file order). No column qualifies: an
  error names every column and why it was rejected. An id is never invented.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from loopline.data.contracts import Contract, parse_contract
from loopline.data.draft.choices import _infer_task, _pick_id, _pick_label
from loopline.data.draft.columns import (
    MARGIN,
    QUARANTINE_MAX_FRACTION,
    ColumnDraft,
    _column_draft,
    _dataset_name,
    _profile,
    _read_sample,
)
from loopline.data.draft.render import _header, _render
from loopline.errors import ConfigError
from loopline.storage.files import atomic_write_text
from loopline.storage.lake import Lake


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


__all__ = ["MARGIN", "ColumnDraft", "Draft", "default_path", "draft_contract", "write_draft"]
