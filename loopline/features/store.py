"""The feature-store read API: a split as a float32 matrix, feature rows by id, with Delta time travel."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from loopline.data.contracts import Contract
from loopline.errors import LooplineError, NotReadyError
from loopline.features.transform import SPLITS, load_transform
from loopline.storage import delta
from loopline.storage.lake import Lake


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
        raise NotReadyError(
            f"dataset {dataset!r} has no features yet: run `loopline features --dataset {dataset}`"
        )
    return table


def read_split(lake: Lake, dataset: str, split: str, version: int | None = None) -> FeatureSplit:
    """One split of features/D at a Delta version (default latest), as a float32 matrix and labels."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}")
    table = _open_features(lake, dataset, version)
    ds = delta.dataset(table)
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
    ds = delta.dataset(table)
    id_col = ds.schema.names[0]
    ids = pa.array(list(entity_ids), type=ds.schema.field(id_col).type)
    return ds.to_table(filter=pc.field(id_col).isin(ids)).to_pandas()


def read_split_frame(lake: Lake, dataset: str, split: str, as_of_version: int | None = None) -> pd.DataFrame:
    """A whole split of features/D as a DataFrame (time travel with as_of_version)."""
    ds = delta.dataset(_open_features(lake, dataset, as_of_version))
    return ds.to_table(filter=pc.field("_split") == split).to_pandas()
