"""The fitted feature transform: declared per column, fitted once on the train split, stored as JSON at
transforms/D/<transform_version>.json next to the tables. Training and serving load that same JSON, so
both apply exactly the same transform.

Numeric: passthrough, standardise, log1p, clip; categorical: one-hot or index, each with an "unknown"
bucket; timestamp parts; string length; bool; null indicators. `_split` is a stable hash of the id.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from loopline.config import FeaturesConfig
from loopline.data.contracts import Contract, parse_contract
from loopline.errors import LooplineError
from loopline.storage.lake import Lake

SPLITS = ("train", "valid", "test")
UNKNOWN = "__unknown__"
_TS_PARTS = {"hour": 23.0, "dayofweek": 6.0, "month": 11.0, "dayofyear": 365.0, "year": 1.0}
# the config's part names (stored in fitted transforms) -> pandas' accessor (dayofweek/dayofyear are deprecated)
_TS_ACCESSORS = {"dayofweek": "day_of_week", "dayofyear": "day_of_year"}
FIT_SAMPLE_ROWS = 1_000_000  # statistics from up to 1M train rows are as good as from all of them


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def assign_split(ids: pd.Series | np.ndarray, fractions: tuple[float, float, float]) -> np.ndarray:
    """train/valid/test by a stable hash of the id (the same id always lands in the same split)."""
    keys = _id_text(pd.Series(ids))
    h = pd.util.hash_array(keys, categorize=False)  # fixed-key SipHash: stable across processes
    u = h.astype(np.float64) / float(2**64)
    total = sum(fractions)
    a, b = fractions[0] / total, (fractions[0] + fractions[1]) / total
    return np.where(u < a, "train", np.where(u < b, "valid", "test"))


def _id_text(ids: pd.Series) -> np.ndarray:
    """Each id as the text `str()` gives it (object array): what the split hashes. Plain numpy ints are
    written by Arrow (the same digits, 2.5x faster than pandas' astype(str)); other types by pandas."""
    if isinstance(ids.dtype, np.dtype) and ids.dtype.kind in "iu":
        import pyarrow as pa

        return pa.array(ids.to_numpy()).cast(pa.string()).to_numpy(zero_copy_only=False)
    return ids.astype(str).to_numpy(dtype=object)


@dataclass
class FeatureTransform:
    """A fitted transform from raw contract columns to a float32 matrix. Pure data + numpy."""

    contract_raw: dict[str, Any]
    steps: list[dict[str, Any]]  # one per source column, in order
    feature_names: list[str]

    @property
    def contract(self) -> Contract:
        return parse_contract(self.contract_raw)

    @property
    def version(self) -> str:
        payload = json.dumps(
            {"steps": self.steps, "contract": self.contract_raw}, sort_keys=True, default=str
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:12]

    def to_dict(self) -> dict[str, Any]:
        return {"contract": self.contract_raw, "steps": self.steps, "feature_names": self.feature_names}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureTransform:
        return cls(contract_raw=data["contract"], steps=data["steps"], feature_names=data["feature_names"])

    def transform(self, df: pd.DataFrame, order: str = "C") -> np.ndarray:
        """Raw contract columns (typed) -> float32 [n, d]. Missing values are imputed, never NaN.
        `order="F"`: column-major, for a caller that reads it column by column (the features/D table: its
        columns are then contiguous, and filling it writes memory in order; 1M demo rows: 1.0 -> 0.3 s)."""
        n = len(df)
        out = np.empty((n, len(self.feature_names)), dtype=np.float32, order=order)
        j = 0
        for step in self.steps:
            block = _apply_step(
                step, df[step["column"]] if step["column"] in df.columns else pd.Series([None] * n)
            )
            out[:, j : j + block.shape[1]] = block
            j += block.shape[1]
        return out


def fit_transform(clean_train: pd.DataFrame, contract: Contract, cfg: FeaturesConfig) -> FeatureTransform:
    """Fit every step on the train rows of clean/D."""
    steps: list[dict[str, Any]] = []
    names: list[str] = []
    for col in contract.feature_columns:
        spec = contract.columns[col]
        series = clean_train[col]
        if spec.type in ("int", "float"):
            kind = cfg.numeric_overrides.get(col, cfg.numeric)
            values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64)
            finite = values[np.isfinite(values)]
            step: dict[str, Any] = {"column": col, "kind": "numeric", "op": kind, "nullable": spec.nullable}
            if kind == "log1p":
                finite = np.sign(finite) * np.log1p(np.abs(finite))
            if kind == "clip":
                lo, hi = (np.quantile(finite, q) for q in cfg.clip_quantiles) if len(finite) else (0.0, 0.0)
                step["lo"], step["hi"] = float(lo), float(hi)
                finite = np.clip(finite, lo, hi)
            mean = float(finite.mean()) if len(finite) else 0.0
            std = float(finite.std()) if len(finite) else 1.0
            step["mean"], step["std"] = mean, std if std > 0 else 1.0
            steps.append(step)
            names.append(_safe(col))
            if spec.nullable:
                names.append(f"{_safe(col)}__isnull")
        elif spec.type == "category":
            vocab = [str(v) for v in spec.values or []]
            steps.append({"column": col, "kind": "category", "op": cfg.categorical, "vocab": vocab})
            if cfg.categorical == "onehot":
                names += [f"{_safe(col)}__{_safe(v)}" for v in vocab] + [f"{_safe(col)}__unknown"]
            else:
                names.append(f"{_safe(col)}__index")
        elif spec.type == "bool":
            steps.append({"column": col, "kind": "bool"})
            names.append(_safe(col))
        elif spec.type == "timestamp":
            steps.append({"column": col, "kind": "timestamp", "parts": list(cfg.timestamp_parts)})
            names += [f"{_safe(col)}__{p}" for p in cfg.timestamp_parts]
        elif spec.type == "string":
            lengths = np.log1p(_text_lengths(series))
            mean, std = (float(lengths.mean()), float(lengths.std()) or 1.0) if len(lengths) else (0.0, 1.0)
            steps.append({"column": col, "kind": "string_length", "mean": mean, "std": std})
            names.append(f"{_safe(col)}__len")
    return FeatureTransform(contract_raw=contract.raw, steps=steps, feature_names=names)


def _apply_step(step: dict[str, Any], series: pd.Series) -> np.ndarray:
    n = len(series)
    kind = step["kind"]
    if kind == "numeric":
        values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        missing = ~np.isfinite(values)
        if step["op"] == "log1p":
            values = np.sign(values) * np.log1p(np.abs(values))
        if step["op"] == "clip":
            values = np.clip(values, step["lo"], step["hi"])
        if step["op"] != "passthrough":
            values = (values - step["mean"]) / step["std"]
            fill = 0.0
        else:
            fill = step["mean"]
        values = np.where(missing, fill, values)
        if step["nullable"]:
            return np.column_stack([values, missing.astype(np.float64)])
        return values[:, None]
    if kind == "category":
        vocab = step["vocab"]
        codes = _category_codes(series, vocab)  # unknown and null share the unknown bucket, len(vocab)
        if step["op"] == "onehot":
            block = np.zeros((n, len(vocab) + 1), dtype=np.float32)
            block[np.arange(n), codes] = 1.0
            return block
        return ((codes + 1) % (len(vocab) + 1)).astype(np.float64)[:, None]  # 0 = unknown
    if kind == "bool":
        return series.fillna(False).astype(bool).to_numpy(dtype=np.float64)[:, None]
    if kind == "timestamp":
        if pd.api.types.is_datetime64_any_dtype(series):
            ts = series
        else:  # raw text (serving, JSON): ISO 8601, with 'T' or ' '
            ts = pd.to_datetime(series, errors="coerce", format="ISO8601")
        cols = []
        for part in step["parts"]:
            values = getattr(ts.dt, _TS_ACCESSORS.get(part, part)).to_numpy(dtype=np.float64, na_value=0.0)
            if part == "year":
                values = values - 2000.0
            cols.append(values / _TS_PARTS[part])
        return np.column_stack(cols) if cols else np.zeros((n, 0))
    if kind == "string_length":
        lengths = np.log1p(_text_lengths(series))
        return ((lengths - step["mean"]) / step["std"])[:, None]
    raise ValueError(f"unknown feature step kind {kind!r}")


def _category_codes(series: pd.Series, vocab: list[str]) -> np.ndarray:
    """Each value's position in `vocab`; len(vocab) for a value not in it or a null."""
    if isinstance(series.dtype, pd.StringDtype):  # text (clean/D's columns): looked up in Arrow, no objects
        import pyarrow as pa
        import pyarrow.compute as pc

        found = pc.index_in(pa.array(series.array), value_set=pa.array(vocab, pa.string()))
        return np.asarray(pc.fill_null(found, len(vocab)).to_numpy(zero_copy_only=False), dtype=np.int64)
    codes = pd.Categorical(series.astype(object).where(series.notna(), None), categories=vocab).codes
    return np.where(codes < 0, len(vocab), codes)


def _text_lengths(series: pd.Series) -> np.ndarray:
    """Characters per value (0 for a null), as floats."""
    if isinstance(series.dtype, pd.StringDtype):  # Arrow counts code points, as Python's len() does
        import pyarrow as pa
        import pyarrow.compute as pc

        lengths = pc.fill_null(pc.utf8_length(pa.array(series.array)), 0)
        return np.asarray(lengths.to_numpy(zero_copy_only=False), dtype=np.float64)
    return series.fillna("").astype(str).str.len().to_numpy(dtype=np.float64)


# -- storage ---------------------------------------------------------------------------------------


def transform_uri(lake: Lake, dataset: str, transform_version: str) -> str:
    return lake.uri("transforms", dataset, f"{transform_version}.json")


def save_transform(lake: Lake, dataset: str, transform: FeatureTransform) -> str:
    uri = transform_uri(lake, dataset, transform.version)
    lake.put_bytes(uri, json.dumps(transform.to_dict(), sort_keys=True, default=str).encode())
    return transform.version


def load_transform(lake: Lake, dataset: str, transform_version: str) -> FeatureTransform:
    try:
        data = lake.get_bytes(transform_uri(lake, dataset, transform_version))
    except (FileNotFoundError, OSError) as exc:
        raise LooplineError(
            f"feature transform {transform_version} of dataset {dataset!r} is missing"
        ) from exc
    return FeatureTransform.from_dict(json.loads(data))
