"""Small features tables for tests and benchmarks of training.

Writes rows straight into clean/D (skipping the validation gate, which other stages test) and builds
features/D with the real feature builder, so training reads exactly what production reads. The demo
contract's rows come from the seeded synthetic source; `tiny_contract` gives multiclass and regression
datasets with learnable signal.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from loopline.config import FeaturesConfig, SyntheticConfig
from loopline.data.contracts import Contract, load_contract, parse_contract
from loopline.storage.lake import Lake


def write_clean(lake: Lake, contract: Contract, frame: pd.DataFrame, *, batch_id: str = "sample-0") -> int:
    """Append `frame` (contract columns, already valid) to clean/D as one batch. Returns the table version."""
    from loopline.data.schemas import clean_schema
    from loopline.storage import delta

    schema = clean_schema(contract)
    data = frame[contract.column_names].copy()
    data["_batch_id"] = batch_id
    data["_ingested_at"] = pd.Timestamp(datetime.now(UTC))
    table = pa.Table.from_pandas(data, schema=schema, preserve_index=False)
    version, _ = delta.append_once(
        lake, lake.table_uri("clean", contract.dataset), table, app_id=f"sample-{batch_id}"
    )
    return version


def build_sample_features(
    lake: Lake,
    contract: Contract,
    frame: pd.DataFrame,
    *,
    batch_id: str = "sample-0",
    cfg: FeaturesConfig | None = None,
) -> dict[str, Any]:
    """clean/D <- frame, then features/D brought up to date. Returns build_features' result."""
    from loopline.features import build_features

    write_clean(lake, contract, frame, batch_id=batch_id)
    return build_features(lake, contract, cfg or FeaturesConfig())


def demo_features(
    lake: Lake, rows: int, *, seed: int = 0, contract_path: str = "contracts/demo.yaml"
) -> dict[str, Any]:
    """The demo dataset (binary churn) with `rows` synthetic rows."""
    from loopline.data.synthetic import generate_frame

    contract = load_contract(contract_path)
    frame = generate_frame(SyntheticConfig(rows=rows, seed=seed))
    return build_sample_features(lake, contract, frame, batch_id=f"demo-{rows}-{seed}")


def tiny_contract(task: str, dataset: str | None = None) -> Contract:
    """A 4-feature contract (3 numeric, 1 category) for a multiclass (3 classes) or regression label."""
    label = (
        {"type": "category", "values": ["low", "mid", "high"]} if task == "multiclass" else {"type": "float"}
    )
    if task == "binary":
        label = {"type": "int", "values": [0, 1]}
    return parse_contract(
        {
            "dataset": dataset or f"tiny_{task}",
            "id": "id",
            "label": "target",
            "task": task,
            "columns": {
                "id": {"type": "int"},
                "x1": {"type": "float"},
                "x2": {"type": "float", "nullable": True},
                "x3": {"type": "int", "min": 0, "max": 100},
                "kind": {"type": "category", "values": ["a", "b", "c"]},
                "target": label,
            },
        }
    )


def tiny_frame(contract: Contract, rows: int, *, seed: int = 0) -> pd.DataFrame:
    """Rows for `tiny_contract` with a label that depends on the features (so a model can learn it)."""
    rng = np.random.default_rng(seed)
    x1 = rng.standard_normal(rows)
    x2 = rng.standard_normal(rows)
    x3 = rng.integers(0, 101, rows)
    kind = rng.choice(["a", "b", "c"], rows)
    score = (
        1.5 * x1 - x2 + 0.02 * (x3 - 50) + np.where(kind == "b", 1.0, 0.0) + 0.3 * rng.standard_normal(rows)
    )
    x2_obj = x2.astype(object)
    x2_obj[rng.random(rows) < 0.05] = None
    frame = pd.DataFrame(
        {"id": np.arange(rows, dtype=np.int64), "x1": x1, "x2": x2_obj, "x3": x3, "kind": kind}
    )
    frame["x2"] = pd.to_numeric(frame["x2"])
    if contract.task == "multiclass":
        frame["target"] = np.where(score < -0.7, "low", np.where(score < 0.7, "mid", "high"))
    elif contract.task == "binary":
        frame["target"] = (score > 0).astype(np.int64)
    else:
        frame["target"] = 10.0 + 3.0 * score
    return frame
