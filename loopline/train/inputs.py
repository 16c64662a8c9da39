"""What a training run reads: the train and valid splits of features/D at one Delta version, plus the
versions and raw rows it records (clean version, transform, contract, an input example)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from loopline.data.contracts import Contract
from loopline.storage.lake import Lake
from loopline.train.loop import TrainingData

log = logging.getLogger(__name__)


@dataclass
class TrainingInputs:
    data: TrainingData
    features_version: int
    transform_version: str
    clean_version: int | None
    contract: Contract
    feature_names: list[str]

    @property
    def data_versions(self) -> dict[str, object]:
        return {
            "features_version": self.features_version,
            "transform_version": self.transform_version,
            "clean_version": self.clean_version,
        }


def load_training_inputs(lake: Lake, dataset: str, features_version: int | None = None) -> TrainingInputs:
    """Read train (and valid) once; valid is read at the same version as train, never 'latest' again."""
    from loopline.features import read_split

    train = read_split(lake, dataset, "train", features_version)
    valid = read_split(lake, dataset, "valid", train.version)
    contract = train.contract
    if len(train.X) == 0:
        from loopline.errors import LooplineError

        raise LooplineError(f"features/{dataset} v{train.version} has no train rows")
    n_classes = len(contract.classes or [False, True]) if contract.task != "regression" else None
    data = TrainingData(
        X_train=train.X,
        y_train=train.y,
        task=contract.task,
        X_valid=valid.X if len(valid.X) else None,
        y_valid=valid.y if len(valid.X) else None,
        n_classes=n_classes,
    )
    return TrainingInputs(
        data=data,
        features_version=train.version,
        transform_version=train.transform_version,
        clean_version=clean_version_of(lake, dataset, train.version),
        contract=contract,
        feature_names=list(train.feature_names),
    )


def clean_version_of(lake: Lake, dataset: str, features_version: int) -> int | None:
    """The clean/D version features/D was built from, as its commit metadata records (None if unknown)."""
    from loopline.storage import delta

    table = delta.open_table(lake, lake.table_uri("features", dataset))
    if table is None:
        return None
    for entry in table.history():
        if entry.get("version") == features_version and entry.get("clean_version") is not None:
            try:
                return int(entry["clean_version"])
            except (TypeError, ValueError):
                return None
    return None


def read_raw_rows(
    lake: Lake, contract: Contract, clean_version: int | None, *, limit: int, split_fractions=None
) -> pd.DataFrame | None:
    """Up to `limit` raw rows of clean/D (contract columns only), train split only when fractions are given.
    None when clean/D is unreadable (a features table built elsewhere)."""
    from loopline.storage import delta

    try:
        table = delta.open_table(lake, lake.table_uri("clean", contract.dataset), clean_version)
    except Exception as exc:  # a vacuumed version, a moved lake: the run still trains
        log.info("clean/%s v%s is not readable (%s)", contract.dataset, clean_version, exc)
        return None
    if table is None:
        return None
    from loopline.features import assign_split, contract_columns

    ds = delta.dataset(table)  # batches of several contract versions: see loopline/features/table.py
    parts, n = [], 0
    for batch in ds.to_batches(
        columns=contract_columns(ds.schema, contract, contract.column_names), batch_size=65_536
    ):
        frame = batch.to_pandas()
        if split_fractions is not None:
            frame = frame[assign_split(frame[contract.id], split_fractions) == "train"]
        parts.append(frame)
        n += len(frame)
        if n >= limit:
            break
    if not parts:
        return None
    return pd.concat(parts, ignore_index=True).head(limit)


def example_rows(raw: pd.DataFrame | None, contract: Contract, n: int = 5) -> pd.DataFrame:
    """An input example of feature columns: real rows when available, else one synthetic valid row."""
    if raw is not None and len(raw):
        return raw[contract.feature_columns].head(n).reset_index(drop=True)
    row: dict[str, object] = {}
    for name in contract.feature_columns:
        spec = contract.columns[name]
        if spec.values:
            row[name] = spec.values[0]
        elif spec.type in ("int", "float"):
            lo = spec.min if spec.min is not None else 0
            row[name] = type(lo)(lo) if spec.type == "float" else int(lo)
        elif spec.type == "bool":
            row[name] = False
        elif spec.type == "timestamp":
            row[name] = pd.Timestamp("2024-01-01")
        else:
            row[name] = ""
    frame = pd.DataFrame([row])
    for name in contract.feature_columns:
        if contract.columns[name].type == "float":
            frame[name] = frame[name].astype(np.float64)
    return frame
