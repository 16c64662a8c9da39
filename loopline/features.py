"""Features: a declarative, fitted, versioned transform from clean/D to features/D, and the read API.

- The transform (numeric: passthrough, standardise, log1p, clip; categorical: one-hot or index, each with an
  "unknown" bucket; timestamp parts; string length; bool) is fitted once on the train split and stored as JSON
  at transforms/D/<transform_version>.json next to the tables; training and serving load that same JSON, so
  both apply exactly the same transform.
- features/D rows carry the id, the label, `_split` (a stable hash of the id), `_batch_id` and `_transform`.
- Incremental: only clean batches not yet in features/D are transformed and appended (one commit, app
  transaction per set of batches). `refit=True` fits a new transform and rewrites the table (a new version;
  older versions stay readable by time travel).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from loopline import delta
from loopline.config import FeaturesConfig
from loopline.contracts import Contract, parse_contract
from loopline.errors import LooplineError
from loopline.lake import Lake

SPLITS = ("train", "valid", "test")
UNKNOWN = "__unknown__"
_TS_PARTS = {"hour": 23.0, "dayofweek": 6.0, "month": 11.0, "dayofyear": 365.0, "year": 1.0}
FIT_SAMPLE_ROWS = 1_000_000  # statistics from up to 1M train rows are as good as from all of them


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def assign_split(ids: pd.Series | np.ndarray, fractions: tuple[float, float, float]) -> np.ndarray:
    """train/valid/test by a stable hash of the id (the same id always lands in the same split)."""
    keys = pd.Series(ids).astype(str).to_numpy(dtype=object)
    h = pd.util.hash_array(keys, categorize=False)  # fixed-key SipHash: stable across processes
    u = h.astype(np.float64) / float(2**64)
    total = sum(fractions)
    a, b = fractions[0] / total, (fractions[0] + fractions[1]) / total
    return np.where(u < a, "train", np.where(u < b, "valid", "test"))


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

    def transform(self, df: pd.DataFrame) -> np.ndarray:
        """Raw contract columns (typed) -> float32 [n, d]. Missing values are imputed, never NaN."""
        n = len(df)
        out = np.empty((n, len(self.feature_names)), dtype=np.float32)
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
            lengths = np.log1p(series.fillna("").astype(str).str.len().to_numpy(dtype=np.float64))
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
        codes = pd.Categorical(series.astype(object).where(series.notna(), None), categories=vocab).codes
        codes = np.where(codes < 0, len(vocab), codes)  # unknown and null share the unknown bucket
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
            values = getattr(ts.dt, part).to_numpy(dtype=np.float64, na_value=0.0)
            if part == "year":
                values = values - 2000.0
            cols.append(values / _TS_PARTS[part])
        return np.column_stack(cols) if cols else np.zeros((n, 0))
    if kind == "string_length":
        lengths = np.log1p(series.fillna("").astype(str).str.len().to_numpy(dtype=np.float64))
        return ((lengths - step["mean"]) / step["std"])[:, None]
    raise ValueError(f"unknown feature step kind {kind!r}")


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


def features_schema(contract: Contract, transform: FeatureTransform, clean: pa.Schema) -> pa.Schema:
    fields = [clean.field(contract.id), clean.field(contract.label)]
    fields += [
        pa.field("_split", pa.string()),
        pa.field("_batch_id", pa.string()),
        pa.field("_transform", pa.string()),
    ]
    fields += [pa.field(name, pa.float32()) for name in transform.feature_names]
    return pa.schema(fields)


def build_features(
    lake: Lake, contract: Contract, cfg: FeaturesConfig, *, refit: bool = False, batch_rows: int = 250_000
) -> dict[str, Any]:
    """Bring features/D up to date with clean/D. Returns versions and counts (the CLI's JSON)."""
    dataset = contract.dataset
    clean_uri, feat_uri = lake.table_uri("clean", dataset), lake.table_uri("features", dataset)
    clean = delta.open_table(lake, clean_uri)
    if clean is None:
        raise LooplineError(f"dataset {dataset!r} has no clean data yet: run `loopline ingest` first")
    clean_version = clean.version()
    feats = None if refit else delta.open_table(lake, feat_uri)
    transform: FeatureTransform | None = None
    done: set[str] = set()
    if feats is not None:
        meta = feats.to_pyarrow_dataset().to_table(columns=["_batch_id", "_transform"])
        done = set(pc.unique(meta["_batch_id"]).to_pylist())
        versions = pc.unique(meta["_transform"]).to_pylist()
        if versions:
            transform = load_transform(lake, dataset, versions[-1])
    clean_ds = clean.to_pyarrow_dataset()
    all_batches = sorted(set(pc.unique(clean_ds.to_table(columns=["_batch_id"])["_batch_id"]).to_pylist()))
    new_batches = [b for b in all_batches if b not in done]
    if transform is None:
        transform = fit_transform(_train_sample(clean_ds, contract, cfg), contract, cfg)
    tv = save_transform(lake, dataset, transform)
    if not new_batches:
        return _features_result(dataset, clean_version, delta.table_version(lake, feat_uri), tv, 0, 0, refit)
    flt = pc.field("_batch_id").isin(new_batches)
    schema = features_schema(contract, transform, clean_ds.schema)
    counter = {"rows": 0}

    def batches() -> Iterator[pa.RecordBatch]:
        for rb in clean_ds.to_batches(filter=flt, batch_size=batch_rows):
            if rb.num_rows == 0:
                continue
            frame = rb.to_pandas()
            counter["rows"] += len(frame)
            yield _features_batch(frame, contract, transform, cfg, schema)

    app_id = "loopline-features-" + hashlib.sha256(("|".join(new_batches) + tv).encode()).hexdigest()[:20]
    version, _ = delta.append_once(
        lake,
        feat_uri,
        pa.RecordBatchReader.from_batches(schema, batches()),
        app_id=app_id,
        metadata={"transform": tv, "clean_version": clean_version, "batches": len(new_batches)},
        mode="overwrite" if refit else "append",
    )
    return _features_result(dataset, clean_version, version, tv, len(new_batches), counter["rows"], refit)


def _features_result(dataset, clean_version, version, tv, n_batches, rows, refit) -> dict[str, Any]:
    return {
        "dataset": dataset,
        "clean_version": clean_version,
        "features_version": version,
        "transform_version": tv,
        "new_batches": n_batches,
        "rows_added": rows,
        "refit": refit,
    }


def _train_sample(clean_ds, contract: Contract, cfg: FeaturesConfig) -> pd.DataFrame:
    cols = contract.feature_columns + [contract.id]
    parts, n = [], 0
    for rb in clean_ds.to_batches(columns=cols, batch_size=250_000):
        frame = rb.to_pandas()
        frame = frame[assign_split(frame[contract.id], cfg.split_fractions) == "train"]
        parts.append(frame)
        n += len(frame)
        if n >= FIT_SAMPLE_ROWS:
            break
    if not parts:
        return pd.DataFrame(columns=cols)
    return pd.concat(parts, ignore_index=True)


def _features_batch(
    frame: pd.DataFrame, contract: Contract, transform: FeatureTransform, cfg, schema
) -> pa.RecordBatch:
    matrix = transform.transform(frame)
    arrays = [
        pa.array(frame[contract.id].to_numpy(), type=schema.field(contract.id).type),
        pa.array(frame[contract.label].to_numpy(), type=schema.field(contract.label).type),
        pa.array(assign_split(frame[contract.id], cfg.split_fractions), pa.string()),
        pa.array(frame["_batch_id"].to_numpy(dtype=object), pa.string()),
        pa.array(np.full(len(frame), transform.version, dtype=object), pa.string()),
    ]
    arrays += [pa.array(matrix[:, j]) for j in range(matrix.shape[1])]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


# -- read API --------------------------------------------------------------------------------------


@dataclass
class FeatureSplit:
    X: np.ndarray
    y: np.ndarray
    ids: np.ndarray
    feature_names: list[str]
    version: int
    transform_version: str
    contract: Contract


def _open_features(lake: Lake, dataset: str, version: int | None):
    table = delta.open_table(lake, lake.table_uri("features", dataset), version)
    if table is None:
        raise LooplineError(
            f"dataset {dataset!r} has no features yet: run `loopline features --dataset {dataset}`"
        )
    return table


def read_split(lake: Lake, dataset: str, split: str, version: int | None = None) -> FeatureSplit:
    """One split of features/D at a Delta version (default latest), as a float32 matrix and labels."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}")
    table = _open_features(lake, dataset, version)
    ds = table.to_pyarrow_dataset()
    tvs = pc.unique(ds.to_table(columns=["_transform"])["_transform"]).to_pylist()
    if len(tvs) != 1:
        raise LooplineError(
            f"features/{dataset} v{table.version()} mixes transforms {tvs}; run features with refit"
        )
    transform = load_transform(lake, dataset, tvs[0])
    contract = transform.contract
    data = ds.to_table(filter=pc.field("_split") == split)
    X = np.empty((data.num_rows, len(transform.feature_names)), dtype=np.float32)
    for j, name in enumerate(transform.feature_names):
        X[:, j] = data[name].to_numpy(zero_copy_only=False)
    return FeatureSplit(
        X=X,
        y=encode_labels(data[contract.label].to_numpy(zero_copy_only=False), contract),
        ids=data[contract.id].to_numpy(zero_copy_only=False),
        feature_names=list(transform.feature_names),
        version=table.version(),
        transform_version=tvs[0],
        contract=contract,
    )


def encode_labels(values: np.ndarray, contract: Contract) -> np.ndarray:
    """binary: float32 0/1 (second class is positive); multiclass: int64 index into the classes; regression: float32."""
    if contract.task == "regression":
        return values.astype(np.float32)
    classes = contract.classes or [False, True]
    index = {str(c): i for i, c in enumerate(classes)}
    codes = np.array([index.get(str(v), -1) for v in values], dtype=np.int64)
    if (codes < 0).any():
        raise LooplineError(f"labels outside the contract's classes {classes}")
    return codes.astype(np.float32) if contract.task == "binary" else codes


def get_features(
    lake: Lake, dataset: str, entity_ids: list | np.ndarray, as_of_version: int | None = None
) -> pd.DataFrame:
    """Feature rows for the given ids, as of a Delta version (time travel; default latest)."""
    table = _open_features(lake, dataset, as_of_version)
    ds = table.to_pyarrow_dataset()
    id_col = ds.schema.names[0]
    ids = pa.array(list(entity_ids), type=ds.schema.field(id_col).type)
    return ds.to_table(filter=pc.field(id_col).isin(ids)).to_pandas()


def read_split_frame(lake: Lake, dataset: str, split: str, as_of_version: int | None = None) -> pd.DataFrame:
    """A whole split of features/D as a DataFrame (time travel with as_of_version)."""
    ds = _open_features(lake, dataset, as_of_version).to_pyarrow_dataset()
    return ds.to_table(filter=pc.field("_split") == split).to_pandas()
