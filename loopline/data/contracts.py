"""Dataset contracts (contracts/*.yaml): parse, check, hash.

A contract names the columns, their types and checks, the id, the label and the task. It is the single
source for validation (compiled to a Great Expectations suite), features and serving input checks.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from loopline.errors import ContractError

TYPES = ("int", "float", "bool", "string", "category", "timestamp")
TASKS = ("binary", "multiclass", "regression")
CHECK_KEYS = {"type", "nullable", "min", "max", "values", "unique", "regex", "max_length"}
TOP_KEYS = {"dataset", "id", "label", "task", "columns", "quarantine_max_fraction", "description"}
NUMERIC_TYPES = ("int", "float")


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    type: str
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    values: tuple[Any, ...] | None = None
    unique: bool = False
    regex: str | None = None
    max_length: int | None = None

    @property
    def is_numeric(self) -> bool:
        return self.type in NUMERIC_TYPES


@dataclass(frozen=True)
class Contract:
    dataset: str
    id: str
    label: str
    task: str
    columns: dict[str, ColumnSpec]
    quarantine_max_fraction: float = 0.05
    path: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def column_names(self) -> list[str]:
        return list(self.columns)

    @property
    def feature_columns(self) -> list[str]:
        """Columns a model sees: everything but the id and the label."""
        return [c for c in self.columns if c not in (self.id, self.label)]

    @property
    def hash(self) -> str:
        """Content hash of the normalised contract (key order and comments do not matter)."""
        canonical = json.dumps(self.raw, sort_keys=True, default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def classes(self) -> list[Any] | None:
        spec = self.columns[self.label]
        return list(spec.values) if spec.values is not None else None


def load_contract(path: str | Path) -> Contract:
    """Load and check a contract file. Raises ContractError naming the file and key."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ContractError("contract file does not exist", file=str(p)) from exc
    except UnicodeDecodeError as exc:
        raise ContractError("contract file is not UTF-8 text", file=str(p)) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ContractError(f"contract is not valid YAML: {exc}", file=str(p)) from exc
    return parse_contract(data, file=str(p))


# yaml.safe_load's constructor (plain data only) on libyaml's parser where PyYAML has it: the same documents
# for ~10x less CPU than the pure-Python parser (the files loaded on scoring and promotion paths)
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def safe_yaml(text: str) -> Any:
    """`yaml.safe_load(text)`, on libyaml's parser where PyYAML has it."""
    return yaml.load(text, Loader=_SAFE_LOADER)  # noqa: S506 (a safe loader)


def parse_contract(data: Any, *, file: str | None = None) -> Contract:
    """Check a contract already parsed from YAML."""
    if not isinstance(data, dict):
        raise ContractError("contract must be a mapping", file=file)
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise ContractError(f"unknown top-level key(s) {sorted(unknown)}", file=file, key=sorted(unknown)[0])
    for key in ("dataset", "id", "label", "task", "columns"):
        if key not in data:
            raise ContractError("required key is missing", file=file, key=key)
    dataset = data["dataset"]
    if not isinstance(dataset, str) or not re.fullmatch(r"[A-Za-z0-9_\-]+", dataset):
        raise ContractError("dataset must be a name of letters, digits, '_' or '-'", file=file, key="dataset")
    task = data["task"]
    if task not in TASKS:
        raise ContractError(f"task must be one of {TASKS}, got {task!r}", file=file, key="task")
    raw_columns = data["columns"]
    if not isinstance(raw_columns, dict) or not raw_columns:
        raise ContractError("columns must be a non-empty mapping", file=file, key="columns")
    columns = {str(name): _parse_column(str(name), spec, file) for name, spec in raw_columns.items()}
    for key in ("id", "label"):
        if data[key] not in columns:
            raise ContractError(f"{key} {data[key]!r} is not among the columns", file=file, key=key)
    if data["id"] == data["label"]:
        raise ContractError("id and label must be different columns", file=file, key="label")
    id_spec = columns[data["id"]]
    if id_spec.nullable:
        raise ContractError(
            "the id column cannot be nullable", file=file, key=f"columns.{data['id']}.nullable"
        )
    label_spec = columns[data["label"]]
    if label_spec.nullable:
        raise ContractError(
            "the label cannot be nullable", file=file, key=f"columns.{data['label']}.nullable"
        )
    if task in ("binary", "multiclass") and label_spec.values is None and label_spec.type != "bool":
        raise ContractError(
            f"a {task} label needs `values` (the classes)", file=file, key=f"columns.{data['label']}.values"
        )
    if task == "binary" and label_spec.values is not None and len(label_spec.values) != 2:
        raise ContractError(
            "a binary label needs exactly 2 values", file=file, key=f"columns.{data['label']}.values"
        )
    if task == "regression" and not label_spec.is_numeric:
        raise ContractError(
            "a regression label must be int or float", file=file, key=f"columns.{data['label']}.type"
        )
    qmf = data.get("quarantine_max_fraction", 0.05)
    if not isinstance(qmf, int | float) or isinstance(qmf, bool) or not 0 <= qmf <= 1:
        raise ContractError("must be a number between 0 and 1", file=file, key="quarantine_max_fraction")
    # the id is unique by definition (first arrival wins)
    columns[data["id"]] = ColumnSpec(**{**id_spec.__dict__, "unique": True})
    return Contract(
        dataset=dataset,
        id=data["id"],
        label=data["label"],
        task=task,
        columns=columns,
        quarantine_max_fraction=float(qmf),
        path=file,
        raw=data,
    )


def _parse_column(name: str, spec: Any, file: str | None) -> ColumnSpec:
    key = f"columns.{name}"
    if not isinstance(spec, dict):
        raise ContractError("column spec must be a mapping like {type: int}", file=file, key=key)
    unknown = set(spec) - CHECK_KEYS
    if unknown:
        raise ContractError(
            f"unknown check(s) {sorted(unknown)}", file=file, key=f"{key}.{sorted(unknown)[0]}"
        )
    ctype = spec.get("type")
    if ctype not in TYPES:
        raise ContractError(f"unknown type {ctype!r}; expected one of {TYPES}", file=file, key=f"{key}.type")
    nullable = spec.get("nullable", False)
    if not isinstance(nullable, bool):
        raise ContractError("nullable must be true or false", file=file, key=f"{key}.nullable")
    lo, hi = spec.get("min"), spec.get("max")
    for bound, val in (("min", lo), ("max", hi)):
        if val is not None:
            if ctype not in NUMERIC_TYPES:
                raise ContractError(
                    f"{bound} applies to int/float columns only", file=file, key=f"{key}.{bound}"
                )
            if not isinstance(val, int | float) or isinstance(val, bool):
                raise ContractError(f"{bound} must be a number", file=file, key=f"{key}.{bound}")
    if lo is not None and hi is not None and lo > hi:
        raise ContractError(f"min {lo} is greater than max {hi}", file=file, key=f"{key}.min")
    values = spec.get("values")
    if values is not None:
        if not isinstance(values, list) or not values:
            raise ContractError("values must be a non-empty list", file=file, key=f"{key}.values")
        if len(set(map(str, values))) != len(values):
            raise ContractError("values has duplicates", file=file, key=f"{key}.values")
        values = tuple(values)
    elif ctype == "category":
        raise ContractError("a category column needs `values`", file=file, key=f"{key}.values")
    regex = spec.get("regex")
    if regex is not None:
        if ctype not in ("string", "category"):
            raise ContractError("regex applies to string columns only", file=file, key=f"{key}.regex")
        try:
            re.compile(regex)
        except (re.error, TypeError) as exc:
            raise ContractError(f"regex does not compile: {exc}", file=file, key=f"{key}.regex") from exc
    max_length = spec.get("max_length")
    if max_length is not None and (
        not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1
    ):
        raise ContractError("max_length must be a positive integer", file=file, key=f"{key}.max_length")
    unique = spec.get("unique", False)
    if not isinstance(unique, bool):
        raise ContractError("unique must be true or false", file=file, key=f"{key}.unique")
    return ColumnSpec(
        name=name,
        type=ctype,
        nullable=nullable,
        min=lo,
        max=hi,
        values=values,
        unique=unique,
        regex=regex,
        max_length=max_length,
    )
