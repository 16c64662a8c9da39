"""The held-out rows a candidate and the champion are judged on.

The test set is the `test` split of features/D at the candidate's features version (its MLflow run records
it as `data.features_version`), read back as the RAW contract rows of those ids (clean/D at the clean
version that features version was built from), so each model scores them through its own bundled
transform. Cached: Delta versions are immutable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from loopline.cache import ComputeCache
from loopline.data.contracts import Contract
from loopline.errors import LooplineError, NotReadyError
from loopline.storage.lake import Lake

_test_sets = ComputeCache(4)


@dataclass
class TestSet:
    """The held-out rows of one features version: raw contract columns and encoded labels."""

    frame: pd.DataFrame
    y: np.ndarray
    contract: Contract
    dataset: str
    features_version: int
    clean_version: int | None
    transform_version: str


def read_test_set(lake: Lake, dataset: str, features_version: int) -> TestSet:
    """Raw rows of the test split of features/D@features_version (cached: Delta versions are immutable)."""
    key = (lake.root, dataset, int(features_version))
    return _test_sets.get_or_compute(key, lambda: _read_test_set(lake, dataset, int(features_version)))


def _read_test_set(lake: Lake, dataset: str, features_version: int) -> TestSet:
    import pyarrow as pa
    import pyarrow.compute as pc

    from loopline.features import contract_columns, encode_labels, load_transform
    from loopline.storage import delta
    from loopline.train.inputs import clean_version_of

    feats = delta.open_table(lake, lake.table_uri("features", dataset), features_version)
    if feats is None:
        raise NotReadyError(f"dataset {dataset!r} has no features table at version {features_version}")
    fds = delta.dataset(feats)
    id_col = fds.schema.names[0]  # features/D starts with the id, then the label (loopline.features)
    test = fds.to_table(columns=[id_col, "_transform"], filter=pc.field("_split") == "test")
    if test.num_rows == 0:
        raise LooplineError(f"features/{dataset} v{features_version} has no test rows to evaluate on")
    transforms = pc.unique(test["_transform"]).to_pylist()
    if len(transforms) != 1:
        raise LooplineError(f"features/{dataset} v{features_version} mixes transforms {transforms}")
    contract = load_transform(lake, dataset, transforms[0]).contract
    clean_version = clean_version_of(lake, dataset, features_version)
    clean = delta.open_table(lake, lake.table_uri("clean", dataset), clean_version)
    if clean is None:
        raise NotReadyError(f"dataset {dataset!r} has no clean table to read the raw test rows from")
    cds = delta.dataset(clean)
    ids = pa.array(test[id_col].to_numpy(zero_copy_only=False), type=cds.schema.field(contract.id).type)
    columns = contract_columns(cds.schema, contract, contract.column_names)  # nulls: a column not there yet
    rows = cds.to_table(columns=columns, filter=pc.field(contract.id).isin(ids))
    if rows.num_rows != test.num_rows:
        raise LooplineError(
            f"clean/{dataset} v{clean_version} holds {rows.num_rows} of the {test.num_rows} test ids of "
            f"features/{dataset} v{features_version}: was clean/{dataset} rewritten or vacuumed?"
        )
    frame = rows.to_pandas()
    y = encode_labels(frame[contract.label].to_numpy(), contract)
    return TestSet(frame, y, contract, dataset, features_version, clean_version, transforms[0])


def clear_test_sets() -> None:
    _test_sets.clear()
