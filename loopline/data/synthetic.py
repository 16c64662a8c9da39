"""The seeded synthetic source behind the demo (contracts/demo.yaml).

A customer-churn table: 31 numeric columns (age, f00..f29), 3 categorical, 1 timestamp, a free-text
note and a binary label with real signal (a logistic model of a handful of the columns plus an
interaction, so a model can learn it and a crippled one cannot). Knobs: rows, seed, drift (mean shift,
scale and category mix on chosen columns) and bad_fraction, which injects every kind of contract
violation so the validation gate has something to catch.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from loopline.config import SyntheticConfig
from loopline.storage import delta
from loopline.storage.files import atomic_writer
from loopline.storage.lake import Lake

DEMO_DATASET = "demo"  # the dataset of contracts/demo.yaml, the only one this source makes
N_FEATURES = 30
SEGMENTS = ["retail", "sme", "corp"]
REGIONS = ["north", "south", "east", "west"]
CHANNELS = ["web", "app", "branch", "phone"]
# violation kinds bad_fraction cycles through; each breaks one contract check
BAD_KINDS = (
    "null_required",
    "out_of_range",
    "wrong_type",
    "unknown_category",
    "inf",
    "null_label",
    "bad_label",
    "duplicate_id",
    "too_long",
    "bad_timestamp",
)


def generate_frame(cfg: SyntheticConfig | None = None) -> pd.DataFrame:
    """Rows of the demo dataset as a DataFrame (object columns where violations were injected)."""
    cfg = cfg or SyntheticConfig()
    rng = np.random.default_rng(cfg.seed or 0)
    n = cfg.rows
    # fixed per-column location and scale (seed 12345: the same "population" for every batch)
    pop = np.random.default_rng(12345)
    loc = pop.normal(0, 3, N_FEATURES)
    scale = pop.uniform(0.5, 3.0, N_FEATURES)
    latent = rng.standard_normal((n, N_FEATURES))
    latent[:, 1::2] = 0.6 * latent[:, 1::2] + 0.4 * latent[:, 0::2]  # some correlation
    feats = loc + scale * latent
    first_id = cfg.id_offset or 0
    cols: dict[str, object] = {"customer_id": np.arange(first_id, first_id + n, dtype=np.int64)}
    age = np.clip(rng.normal(45, 14, n).round(), 18, 95).astype(np.int64)
    cols["age"] = age
    for i in range(N_FEATURES):
        cols[f"f{i:02d}"] = np.clip(feats[:, i], -49.0, 49.0)
    segment = rng.choice(SEGMENTS, n, p=[0.6, 0.3, 0.1])
    region = rng.choice(REGIONS, n)
    channel = rng.choice(CHANNELS, n, p=[0.4, 0.35, 0.15, 0.1]).astype(object)
    channel[rng.random(n) < 0.02] = None
    cols["segment"], cols["region"], cols["channel"] = segment, region, channel
    start = np.datetime64("2024-01-01T00:00:00")
    cols["signup_at"] = start + rng.integers(0, 3 * 365 * 24 * 3600, n).astype("timedelta64[s]")
    notes = np.array(
        ["", "called support", "late payment", "upgraded plan", "asked for discount"], dtype=object
    )
    note = notes[rng.integers(0, len(notes), n)]
    note[rng.random(n) < 0.3] = None
    cols["note"] = note
    df = pd.DataFrame(cols)
    # the label: a logistic model of latent features, segment, age and one interaction
    z = (
        1.2 * latent[:, 0]
        - 0.9 * latent[:, 3]
        + 0.7 * latent[:, 6] * latent[:, 9]
        + 0.5 * latent[:, 12]
        + np.where(segment == "sme", 0.6, np.where(segment == "corp", -0.8, 0.0))
        + 0.02 * (age - 45)
        - 0.3
    )
    df["churned"] = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(np.int64)
    _apply_drift(df, cfg, rng)
    if cfg.bad_fraction > 0:
        df = _inject_violations(df, cfg.bad_fraction, rng)
    return df


def _apply_drift(df: pd.DataFrame, cfg: SyntheticConfig, rng: np.random.Generator) -> None:
    for col in cfg.drift_columns:
        if col not in df.columns:
            raise ValueError(f"drift column {col!r} is not in the demo dataset")
        if col in ("segment", "region", "channel"):
            cats = {"segment": SEGMENTS, "region": REGIONS, "channel": CHANNELS}[col]
            redraw = rng.random(len(df)) < cfg.drift_category_mix
            df.loc[redraw, col] = cats[-1]
        elif df[col].dtype.kind in "fi":
            values = df[col].to_numpy(dtype=np.float64)
            mean, std = values.mean(), values.std() or 1.0
            shifted = mean + (values - mean) * cfg.drift_scale + cfg.drift_mean_shift * std
            if col == "age":
                df[col] = np.clip(shifted.round(), 18, 100).astype(np.int64)
            else:
                df[col] = np.clip(shifted, -49.0, 49.0)


def _inject_violations(df: pd.DataFrame, fraction: float, rng: np.random.Generator) -> pd.DataFrame:
    n = len(df)
    k = int(round(n * fraction))
    if k == 0:
        return df
    df = df.astype({c: object for c in df.columns if c != "customer_id"})
    rows = rng.choice(n, size=k, replace=False)
    for j, row in enumerate(rows):
        kind = BAD_KINDS[j % len(BAD_KINDS)]
        if kind == "null_required":
            df.at[row, "f00"] = None
        elif kind == "out_of_range":
            df.at[row, "age"] = 150
        elif kind == "wrong_type":
            df.at[row, "f03"] = "not-a-number"
        elif kind == "unknown_category":
            df.at[row, "segment"] = "galaxy"
        elif kind == "inf":
            df.at[row, "f06"] = float("inf")
        elif kind == "null_label":
            df.at[row, "churned"] = None
        elif kind == "bad_label":
            df.at[row, "churned"] = 2
        elif kind == "duplicate_id":
            df.at[row, "customer_id"] = df.at[rows[0], "customer_id"] if row != rows[0] else row
        elif kind == "too_long":
            df.at[row, "note"] = "x" * 300
        elif kind == "bad_timestamp":
            df.at[row, "signup_at"] = "not-a-date"
    return df


def write_source(df: pd.DataFrame, path: str | Path, fmt: str = "parquet") -> Path:
    """Write a frame the way an upstream system would hand it over (csv, parquet or jsonl)."""
    path = Path(path)
    if fmt not in ("csv", "jsonl", "parquet"):
        raise ValueError(f"unknown format {fmt!r}; expected csv, parquet or jsonl")
    # atomically: a run killed mid-write must not leave a torn file that later runs take as the batch
    with atomic_writer(path, "wb" if fmt == "parquet" else "w") as fh:
        if fmt == "csv":
            df.to_csv(fh, index=False)
        elif fmt == "jsonl":
            df.to_json(fh, orient="records", lines=True, date_format="iso")
        else:
            out = df.copy()
            for col in out.columns:
                if out[col].dtype == object:  # mixed types after injected violations: keep them as text
                    out[col] = [None if _is_missing(v) else _text(v) for v in out[col]]
            out.to_parquet(fh, index=False)
    return path


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NaT


def _text(value: object) -> str:
    if isinstance(value, pd.Timestamp | np.datetime64):
        return pd.Timestamp(value).isoformat()
    return str(value)


def next_batch(cfg: SyntheticConfig, lake: Lake, dataset: str = DEMO_DATASET) -> SyntheticConfig:
    """`cfg` with an unset seed / id_offset filled so that each run lands a fresh batch: ids start after
    the largest id in clean/D, and the seed is the number of batches D has seen. Set values stay."""
    if cfg.seed is not None and cfg.id_offset is not None:
        return cfg
    update: dict[str, int] = {}
    if cfg.id_offset is None:
        ids = delta.read_column(lake, lake.table_uri("clean", dataset), ["customer_id"])
        top = pc.max(ids["customer_id"]).as_py() if ids is not None and ids.num_rows else None
        update["id_offset"] = 0 if top is None else int(top) + 1
    if cfg.seed is None:
        batches = delta.read_column(lake, lake.uri("batches", dataset), ["batch_id"])
        update["seed"] = batches.num_rows if batches is not None else 0
    return cfg.model_copy(update=update)


def generate_source(cfg: SyntheticConfig, directory: str | Path) -> Path:
    """Generate one batch file named by its parameters (the same knobs give the same file)."""
    name = f"demo-seed{cfg.seed or 0}-rows{cfg.rows}-off{cfg.id_offset or 0}"
    if cfg.drift_columns:
        knobs = (
            f"{sorted(cfg.drift_columns)}|{cfg.drift_mean_shift}|{cfg.drift_scale}|{cfg.drift_category_mix}"
        )
        name += f"-drift{hashlib.sha256(knobs.encode()).hexdigest()[:8]}"
    if cfg.bad_fraction:
        name += f"-bad{cfg.bad_fraction:g}"
    ext = {"csv": "csv", "parquet": "parquet", "jsonl": "jsonl"}[cfg.format]
    path = Path(directory) / f"{name}.{ext}"
    if not path.exists():
        write_source(generate_frame(cfg), path, cfg.format)
    return path
