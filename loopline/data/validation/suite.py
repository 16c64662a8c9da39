"""The contract compiled once into a list of checks; each check has a Great Expectations form and a numpy form.

`compile_checks(contract)` is the single compile step. Every `Check` knows:
- `to_expectation()`: the GX 1.x expectation (tagged with `meta={"loopline_key": key}`), and
- `violations(series)`: the same rule as one vectorised pass, written as a mirror of the GX pandas
  implementation (GX 1.24 `_pandas` metric functions): nulls are skipped by every map expectation except
  not-null; between is `(min <= v) & (v <= max)`; in-set is `Series.isin`; regex is
  `astype(str).str.contains` (a search: anchor a contract regex with ^...$ to match whole values); length
  is `astype(str).str.len()`; unique is `duplicated(keep=False)`.
`loopline.data.validation.gx.cross_check` runs both on the same frame and raises if any row differs.

Two checks are the gate's alone, because GX cannot see them: `type` (the value did not parse as the contract
type; GX sees only the typed frame, where such a value is null) and `new_id` (the id is already in clean/D,
a set of ids GX is never given). The gate also applies `unique` with "first clean arrival wins" across
chunks and batches; its GX form checks uniqueness within the frame GX validates.

Floats always get a between check: with no bounds it is `between(-max_float, max_float)`, i.e. finite, so
`inf` breaks the contract of every float column (`nan` is null).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from loopline.data.contracts import ColumnSpec, Contract
from loopline.errors import ContractError

MAX_FLOAT = float(np.finfo(np.float64).max)
GATE_ONLY_KINDS = ("type", "new_id")
EXPECTATIONS = {
    "not_null": "expect_column_values_to_not_be_null",
    "between": "expect_column_values_to_be_between",
    "in_set": "expect_column_values_to_be_in_set",
    "regex": "expect_column_values_to_match_regex",
    "max_length": "expect_column_value_lengths_to_be_between",
    "unique": "expect_column_values_to_be_unique",
}


@dataclass(frozen=True)
class Check:
    column: str
    kind: str  # type | not_null | between | in_set | regex | max_length | unique | new_id
    params: dict[str, Any] = field(default_factory=dict)
    description: str = (
        ""  # the rule as a reader sees it, e.g. "expect_column_values_to_be_between(min_value=18)"
    )

    @property
    def key(self) -> str:
        return f"{self.column}:{self.kind}"

    @property
    def label(self) -> str:
        """The reason a bad row carries: `age: expect_column_values_to_be_between(min_value=18, max_value=100)`."""
        return f"{self.column}: {self.description}"

    @property
    def expectation_type(self) -> str | None:
        """The GX expectation this check is, or None for the gate's own checks (type, new_id)."""
        return EXPECTATIONS.get(self.kind)

    def to_expectation(self):
        """The GX 1.x expectation object (imports great_expectations: call only when GX runs)."""
        import great_expectations.expectations as gxe

        meta = {"loopline_key": self.key}
        col = self.column
        p = self.params
        if self.kind == "not_null":
            return gxe.ExpectColumnValuesToNotBeNull(column=col, meta=meta)
        if self.kind == "between":
            return gxe.ExpectColumnValuesToBeBetween(
                column=col, min_value=p["min_value"], max_value=p["max_value"], meta=meta
            )
        if self.kind == "in_set":
            return gxe.ExpectColumnValuesToBeInSet(column=col, value_set=list(p["value_set"]), meta=meta)
        if self.kind == "regex":
            return gxe.ExpectColumnValuesToMatchRegex(column=col, regex=p["regex"], meta=meta)
        if self.kind == "max_length":
            return gxe.ExpectColumnValueLengthsToBeBetween(column=col, max_value=p["max_value"], meta=meta)
        if self.kind == "unique":
            return gxe.ExpectColumnValuesToBeUnique(column=col, meta=meta)
        raise ValueError(f"check {self.key} is the gate's own and has no GX expectation")

    def violations(self, values: pd.Series) -> np.ndarray:
        """Bool mask of the rows of a typed column that break this check, with GX's semantics."""
        present = values.notna().to_numpy(dtype=bool)
        if self.kind == "not_null":
            return ~present
        out = np.zeros(len(values), dtype=bool)
        if not present.any():
            return out
        p = self.params
        if self.kind == "between":
            numbers = _numbers(values)
            ok = np.ones(len(values), dtype=bool)
            if p["min_value"] is not None:
                ok &= p["min_value"] <= numbers
            if p["max_value"] is not None:
                ok &= numbers <= p["max_value"]
            return present & ~ok
        if self.kind == "in_set":
            return present & ~values.isin(list(p["value_set"])).to_numpy(dtype=bool, na_value=False)
        if self.kind == "unique":
            return present & values.duplicated(keep=False).to_numpy(dtype=bool)
        text = values[present].astype(str)
        if self.kind == "regex":
            ok = text.str.contains(p["regex"], regex=True).to_numpy(dtype=bool, na_value=False)
        elif self.kind == "max_length":
            ok = (text.str.len() <= p["max_value"]).to_numpy(dtype=bool, na_value=False)
        else:
            raise ValueError(f"check {self.key} is evaluated by the gate, not per value")
        out[present] = ~ok
        return out


def _numbers(values: pd.Series) -> np.ndarray:
    """Numeric values as a plain numpy array (nulls filled; callers mask them)."""
    if pd.api.types.is_integer_dtype(values.dtype):
        return values.fillna(0).to_numpy(dtype=np.int64)
    return values.to_numpy(dtype=np.float64, na_value=np.nan)


def compile_checks(contract: Contract) -> list[Check]:
    """The contract as an ordered list of checks (per column: type, not-null, between, set, regex, length, unique)."""
    checks: list[Check] = []
    for name, spec in contract.columns.items():
        checks += _column_checks(spec, is_id=name == contract.id, contract=contract)
    return checks


def gx_checks(checks: list[Check]) -> list[Check]:
    return [c for c in checks if c.expectation_type is not None]


def build_suite(contract: Contract, checks: list[Check] | None = None):
    """The GX ExpectationSuite for a contract, named `<dataset>-<contract hash>`."""
    import great_expectations as gx

    checks = compile_checks(contract) if checks is None else checks
    return gx.ExpectationSuite(
        name=suite_name(contract),
        expectations=[c.to_expectation() for c in gx_checks(checks)],
        meta={"contract": contract.path, "contract_hash": contract.hash},
    )


def suite_name(contract: Contract) -> str:
    return f"{contract.dataset}-{contract.hash}"


def _column_checks(spec: ColumnSpec, *, is_id: bool, contract: Contract) -> list[Check]:
    col = spec.name
    out: list[Check] = []
    if spec.type not in ("string", "category"):
        out.append(Check(col, "type", {"type": spec.type}, f"type {spec.type}"))
    if not spec.nullable:
        out.append(Check(col, "not_null", {}, EXPECTATIONS["not_null"]))
    if spec.is_numeric and (spec.min is not None or spec.max is not None or spec.type == "float"):
        lo, hi = spec.min, spec.max
        finite = spec.type == "float" and (lo is None or hi is None)
        if spec.type == "float":  # bounds also reject inf; nan is null
            lo = -MAX_FLOAT if lo is None else float(lo)
            hi = MAX_FLOAT if hi is None else float(hi)
        shown = [
            f"{k}={_number(v)}"
            for k, v in (("min_value", spec.min), ("max_value", spec.max))
            if v is not None
        ]
        shown += ["finite"] if finite else []
        out.append(
            Check(
                col,
                "between",
                {"min_value": lo, "max_value": hi},
                f"{EXPECTATIONS['between']}({', '.join(shown)})",
            )
        )
    if spec.values is not None:
        values = tuple(_normalise_value(v, spec, contract) for v in spec.values)
        shown = ", ".join(map(str, values[:10])) + (", ..." if len(values) > 10 else "")
        out.append(Check(col, "in_set", {"value_set": values}, f"{EXPECTATIONS['in_set']}([{shown}])"))
    if spec.regex is not None:
        out.append(Check(col, "regex", {"regex": spec.regex}, f"{EXPECTATIONS['regex']}({spec.regex!r})"))
    if spec.max_length is not None:
        out.append(
            Check(
                col,
                "max_length",
                {"max_value": spec.max_length},
                f"{EXPECTATIONS['max_length']}(max_value={spec.max_length})",
            )
        )
    if spec.unique or is_id:
        out.append(Check(col, "unique", {}, EXPECTATIONS["unique"]))
    if is_id:
        out.append(Check(col, "new_id", {}, f"id already ingested (in clean/{contract.dataset})"))
    return out


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _normalise_value(value: Any, spec: ColumnSpec, contract: Contract) -> Any:
    """`values` entries in the column's type, so GX and the numpy pass compare like with like."""
    key = f"columns.{spec.name}.values"
    try:
        if spec.type == "int":
            number = float(value)
            if isinstance(value, bool) or not number.is_integer():
                raise ValueError
            return int(number)
        if spec.type == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if spec.type == "bool":
            if isinstance(value, bool):
                return value
            return {"true": True, "1": True, "false": False, "0": False}[str(value).strip().lower()]
    except (ValueError, TypeError, KeyError) as exc:
        raise ContractError(f"value {value!r} is not a {spec.type}", file=contract.path, key=key) from exc
    if spec.type == "timestamp":
        raise ContractError("values is not supported on timestamp columns", file=contract.path, key=key)
    return str(value)
