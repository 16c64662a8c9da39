"""Non-demo datasets for tests, from scikit-learn's bundled ones (a test extra), as users bring them: a
CSV file with an id column, its contract drafted by `loopline init`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

CREDIT = {  # DESIGN.md's example contract
    "dataset": "credit",
    "id": "customer_id",
    "label": "default",
    "task": "binary",
    "columns": {
        "customer_id": {"type": "int"},
        "age": {"type": "int", "min": 18, "max": 120},
        "income": {"type": "float", "min": 0, "nullable": True},
        "segment": {"type": "category", "values": ["retail", "sme", "corp"]},
        "note": {"type": "string", "max_length": 200, "nullable": True},
        "signup_at": {"type": "timestamp"},
        "default": {"type": "int", "values": [0, 1]},
    },
    "quarantine_max_fraction": 0.05,
}

LOADERS = {
    "cancer": ("load_breast_cancer", "binary"),  # 569 rows, 30 float features, label 0/1
    "wine": ("load_wine", "multiclass"),  # 178 rows, 13 features, 3 classes
    "diabetes": ("load_diabetes", "regression"),  # 442 rows, 10 features, a float target
}


def frame(name: str, *, rows: int | None = None) -> pd.DataFrame:
    """The bundled dataset as a frame with an `id` column first and the label last (`target`)."""
    import sklearn.datasets

    loader, _ = LOADERS[name]
    data = getattr(sklearn.datasets, loader)(as_frame=True)
    df = data.frame.copy()
    if rows is not None:
        df = df.iloc[:rows]
    df.insert(0, "id", np.arange(1, len(df) + 1))
    return df


def write_dataset(name: str, directory: Path, *, rows: int | None = None) -> Path:
    """`directory/<name>.csv`."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.csv"
    frame(name, rows=rows).to_csv(path, index=False)
    return path
