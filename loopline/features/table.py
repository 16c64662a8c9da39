"""features/D: clean/D through the fitted transform, kept up to date incrementally.

Rows carry the id, the label, `_split` (a stable hash of the id), `_batch_id` and `_transform`. Only clean
batches not yet in features/D are transformed and appended (one commit, app transaction per set of
batches). `refit=True` fits a new transform and rewrites the table (a new version; older versions stay
readable by time travel).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from loopline.config import FeaturesConfig
from loopline.data.contracts import Contract
from loopline.errors import LooplineError
from loopline.features.transform import (
    FIT_SAMPLE_ROWS,
    FeatureTransform,
    assign_split,
    fit_transform,
    load_transform,
    save_transform,
)
from loopline.storage import delta
from loopline.storage.lake import Lake


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
