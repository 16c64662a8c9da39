"""The reference profile: a compact, JSON-serialisable summary of the training data, built once.

Drift detection compares a current window with this profile only; it never re-reads training data.
Per numeric feature: n, missing, mean, std (ddof=0, as Evidently norms Wasserstein), min, max, and
either the sorted raw values (references of at most `raw_max_rows` rows: exact KS and Wasserstein, and
they are small) or a fine binned CDF on `cdf_bins` quantile edges (see binning.py) plus a coarse
`bins`-bin quantile histogram for PSI and Jensen-Shannon, and the value counts when the column has at
most 5 distinct values. Per categorical feature: the value counts. The model's predictions are profiled
the same way (numeric scores, or labels / argmax of class probabilities as a categorical).

Quantiles are exact: the one-shot builder sorts one column at a time; `ProfileBuilder` streams chunks,
spills each numeric column to a temporary file (8 bytes a value) and sorts one column at a time in
`finish()`. Peak memory is one column (8 bytes x rows) plus one chunk, whatever the number of columns,
and the result equals the one-shot profile exactly. An approximate sketch (a fine histogram fixed on
the first chunk, or a relative-error sketch) would bound memory further, but it either needs the range
up front or loses absolute accuracy for data with a large offset (years, prices), and the spill files
cost only disk.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loopline.errors import DriftError
from loopline.monitoring.binning import (
    LOW_CARDINALITY_MAX,
    NumericSummary,
    number_key,
    order_statistic_edges,
    sort_finite,
)
from loopline.storage.files import atomic_write_text

# a data format name stored in every profile, not a module path: it keeps its pre-regroup value, so
# a stored format name, not a module path: it stays as written before the core was grouped by stage
PROFILE_FORMAT = "loopline.drift.profile"
PROFILE_VERSION = 1
DEFAULT_BINS = 20  # coarse quantile bins for PSI / Jensen-Shannon on numeric features
DEFAULT_CDF_BINS = 256  # fine quantile bins for Wasserstein / KS: ~1/256 of the mass per bin
DEFAULT_RAW_MAX_ROWS = 1000  # Evidently's small-reference limit: keep the raw values, tests are exact


def coarse_inner_edges(xs: np.ndarray, bins: int) -> np.ndarray:
    """Inner edges of a `bins`-bin quantile histogram of sorted `xs` (outer bins are open)."""
    positions = np.round(np.linspace(0, len(xs) - 1, bins + 1)).astype(np.int64)[1:-1]
    return np.unique(xs[positions])


def summary_to_dict(summary: NumericSummary) -> dict[str, Any]:
    return {
        "edges": summary.edges.tolist(),
        "counts": summary.counts.tolist(),
        "offsets": summary.offsets.tolist(),
        "equal": summary.equal.tolist(),
        "coarse_edges": summary.coarse_edges.tolist(),
        "coarse_counts": summary.coarse_counts.tolist(),
    }


def profile_numeric(
    values: np.ndarray, *, bins: int, cdf_bins: int, raw_max_rows: int, in_place: bool = False
) -> dict[str, Any]:
    """Profile of one numeric column from its raw values (NaN/inf are counted as missing).

    `in_place`: sort `values` itself instead of a copy (the chunked builder's own spilled column).
    """
    xs, dropped = sort_finite(values, in_place=in_place)
    out: dict[str, Any] = {"n": len(xs), "n_missing": dropped}
    if len(xs) == 0:
        return out
    out.update(mean=float(xs.mean()), std=float(xs.std()), min=float(xs[0]), max=float(xs[-1]))
    if len(xs) <= raw_max_rows:
        out["raw"] = xs.tolist()
        return out
    summary = NumericSummary(
        edges=order_statistic_edges(xs, cdf_bins), coarse_edges=coarse_inner_edges(xs, bins)
    )
    summary.add_sorted(xs)
    out.update(summary_to_dict(summary))
    starts = np.flatnonzero(np.concatenate(([True], xs[1:] != xs[:-1])))
    if len(starts) <= LOW_CARDINALITY_MAX:
        counts = np.diff(np.concatenate((starts, [len(xs)])))
        out["values"] = {number_key(v): int(c) for v, c in zip(xs[starts], counts, strict=True)}
    return out


def reference_summary(profile: dict[str, Any], bins: int) -> NumericSummary:
    """The binned summary of a numeric profile entry (rebuilt from the raw values when stored)."""
    if "raw" in profile:
        xs = np.asarray(profile["raw"], dtype=np.float64)
        summary = NumericSummary(edges=np.unique(xs), coarse_edges=coarse_inner_edges(xs, bins))
        summary.add_sorted(xs)
        return summary
    return NumericSummary(
        edges=np.asarray(profile["edges"], dtype=np.float64),
        coarse_edges=np.asarray(profile["coarse_edges"], dtype=np.float64),
        n=int(profile["n"]),
        counts=np.asarray(profile["counts"], dtype=np.int64),
        offsets=np.asarray(profile["offsets"], dtype=np.float64),
        equal=np.asarray(profile["equal"], dtype=np.int64),
        coarse_counts=np.asarray(profile["coarse_counts"], dtype=np.int64),
    )


def reference_values(profile: dict[str, Any]) -> dict[str, int] | None:
    """Value counts of a low-cardinality numeric profile entry, else None."""
    if "raw" in profile:
        xs = np.asarray(profile["raw"], dtype=np.float64)
        uniq, counts = np.unique(xs, return_counts=True)
        if len(uniq) > LOW_CARDINALITY_MAX:
            return None
        return {number_key(v): int(c) for v, c in zip(uniq, counts, strict=True)}
    return profile.get("values")


def column_as_float(frame: pd.DataFrame, name: str, side: str) -> np.ndarray:
    """A numeric column as float64 (nullable ints/bools too); a typed error names the column."""
    if name not in frame.columns:
        raise DriftError(f"the {side} data has no column {name!r}", column=name)
    try:
        return frame[name].to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError) as exc:
        raise DriftError(
            f"column {name!r} of the {side} data is not numeric ({frame[name].dtype})", column=name
        ) from exc


def count_categories(frame: pd.DataFrame, name: str, side: str) -> tuple[dict[str, int], int]:
    """Value counts of a categorical column, keyed by str(value); missing values counted apart."""
    if name not in frame.columns:
        raise DriftError(f"the {side} data has no column {name!r}", column=name)
    series = frame[name]
    counts: dict[str, int] = {}
    for value, count in series.value_counts(dropna=True, sort=False).items():
        key = str(value)
        counts[key] = counts.get(key, 0) + int(count)
    return counts, int(series.isna().sum())


def prediction_kind(predictions: np.ndarray) -> str:
    """'numeric' for 1-D float scores, else 'categorical' (labels, or argmax of 2-D probabilities)."""
    arr = np.asarray(predictions)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim == 1 and arr.dtype.kind == "f":
        return "numeric"
    if arr.ndim in (1, 2):
        return "categorical"
    raise DriftError(
        f"predictions must be 1-D scores/labels or 2-D class probabilities, got shape {arr.shape}"
    )


def prediction_labels(predictions: np.ndarray) -> pd.DataFrame:
    """Predictions as a one-column frame ('prediction') of labels or scores."""
    arr = np.asarray(predictions)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    elif arr.ndim == 2:
        arr = np.argmax(arr, axis=1)
    return pd.DataFrame({"prediction": arr})


def _categorical_entry(counts: dict[str, int], n_missing: int) -> dict[str, Any]:
    return {
        "n": int(sum(counts.values())),
        "n_missing": n_missing,
        "frequencies": {k: counts[k] for k in sorted(counts)},
    }


def _empty_profile(
    numeric: list[str], categorical: list[str], bins: int, cdf_bins: int, raw_max_rows: int
) -> dict[str, Any]:
    overlap = set(numeric) & set(categorical)
    if overlap:
        raise DriftError(f"columns listed as both numeric and categorical: {sorted(overlap)}")
    if bins < 2 or cdf_bins < 2:
        raise DriftError(f"bins and cdf_bins must be >= 2 (got {bins}, {cdf_bins})")
    return {
        "format": PROFILE_FORMAT,
        "version": PROFILE_VERSION,
        "n_rows": 0,
        "bins": bins,
        "cdf_bins": cdf_bins,
        "raw_max_rows": raw_max_rows,
        "numeric": {},
        "categorical": {},
        "prediction": None,
    }


def build_reference_profile(
    df: pd.DataFrame,
    numeric: list[str],
    categorical: list[str],
    predictions: np.ndarray | None = None,
    bins: int = DEFAULT_BINS,
    *,
    cdf_bins: int = DEFAULT_CDF_BINS,
    raw_max_rows: int = DEFAULT_RAW_MAX_ROWS,
) -> dict[str, Any]:
    """Profile a reference frame held in memory (one column at a time). See `ProfileBuilder` for chunks."""
    profile = _empty_profile(numeric, categorical, bins, cdf_bins, raw_max_rows)
    profile["n_rows"] = len(df)
    opts = {"bins": bins, "cdf_bins": cdf_bins, "raw_max_rows": raw_max_rows}
    for name in numeric:
        profile["numeric"][name] = profile_numeric(column_as_float(df, name, "reference"), **opts)
    for name in categorical:
        profile["categorical"][name] = _categorical_entry(*count_categories(df, name, "reference"))
    if predictions is not None:
        if len(predictions) != len(df):
            raise DriftError(f"{len(predictions)} predictions for {len(df)} reference rows")
        kind = prediction_kind(predictions)
        frame = prediction_labels(predictions)
        if kind == "numeric":
            entry = profile_numeric(column_as_float(frame, "prediction", "reference"), **opts)
        else:
            entry = _categorical_entry(*count_categories(frame, "prediction", "reference"))
        profile["prediction"] = {"kind": kind, **entry}
    return profile


class ProfileBuilder:
    """Build the same profile as `build_reference_profile` from chunks, in bounded memory.

    >>> with ProfileBuilder(numeric, categorical) as builder:
    ...     for chunk in chunks:
    ...         builder.update(chunk, predictions=chunk_predictions)
    ...     profile = builder.finish()
    """

    def __init__(
        self,
        numeric: list[str],
        categorical: list[str],
        *,
        bins: int = DEFAULT_BINS,
        cdf_bins: int = DEFAULT_CDF_BINS,
        raw_max_rows: int = DEFAULT_RAW_MAX_ROWS,
        spill_dir: str | os.PathLike | None = None,
    ):
        self._profile = _empty_profile(numeric, categorical, bins, cdf_bins, raw_max_rows)
        self._numeric = list(numeric)
        self._categorical = list(categorical)
        self._opts = {"bins": bins, "cdf_bins": cdf_bins, "raw_max_rows": raw_max_rows}
        self._spill_root = spill_dir
        self._dir: Path | None = None
        self._files: dict[str, Any] = {}
        self._categories: dict[str, tuple[dict[str, int], int]] = {name: ({}, 0) for name in categorical}
        self._prediction_kind: str | None = None
        self._prediction_counts: tuple[dict[str, int], int] = ({}, 0)
        self._chunks = 0

    def __enter__(self) -> ProfileBuilder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _spill(self, key: str, values: np.ndarray) -> None:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="loopline-profile-", dir=self._spill_root))
        handle = self._files.get(key)
        if handle is None:
            handle = self._files[key] = open(self._dir / f"{len(self._files)}.f64", "wb")  # noqa: SIM115
        values.astype(np.float64, copy=False).tofile(handle)

    def update(self, chunk: pd.DataFrame, predictions: np.ndarray | None = None) -> None:
        """Add one chunk of reference rows (and, if the profile has them, their predictions)."""
        first = self._chunks == 0
        self._chunks += 1
        for name in self._numeric:
            self._spill(f"n:{name}", column_as_float(chunk, name, "reference"))
        for name in self._categorical:
            counts, missing = count_categories(chunk, name, "reference")
            self._categories[name] = _merge(self._categories[name], (counts, missing))
        if first and predictions is not None:
            self._prediction_kind = prediction_kind(predictions)
        if (predictions is None) != (self._prediction_kind is None):
            raise DriftError("predictions must be given with every chunk or with none")
        if predictions is not None:
            if len(predictions) != len(chunk):
                raise DriftError(f"{len(predictions)} predictions for a chunk of {len(chunk)} rows")
            frame = prediction_labels(predictions)
            if self._prediction_kind == "numeric":
                self._spill("p", column_as_float(frame, "prediction", "reference"))
            else:
                self._prediction_counts = _merge(
                    self._prediction_counts, count_categories(frame, "prediction", "reference")
                )
        self._profile["n_rows"] += len(chunk)

    def _read_spilled(self, key: str) -> np.ndarray:
        handle = self._files[key]
        handle.close()
        return np.fromfile(handle.name, dtype=np.float64)

    def finish(self) -> dict[str, Any]:
        """The profile (exact quantiles: one spilled column at a time is read back and sorted)."""
        if self._chunks == 0:
            raise DriftError("no reference rows: update() was never called")
        profile = self._profile
        try:
            for name in self._numeric:
                column = self._read_spilled(f"n:{name}")
                profile["numeric"][name] = profile_numeric(column, in_place=True, **self._opts)
                del column  # one column in memory at a time
            for name in self._categorical:
                profile["categorical"][name] = _categorical_entry(*self._categories[name])
            if self._prediction_kind == "numeric":
                entry = profile_numeric(self._read_spilled("p"), in_place=True, **self._opts)
                profile["prediction"] = {"kind": "numeric", **entry}
            elif self._prediction_kind == "categorical":
                profile["prediction"] = {
                    "kind": "categorical",
                    **_categorical_entry(*self._prediction_counts),
                }
        finally:
            self.close()
        return profile

    def close(self) -> None:
        """Remove the spill files (finish() does it too)."""
        for handle in self._files.values():
            handle.close()
        self._files.clear()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def _merge(a: tuple[dict[str, int], int], b: tuple[dict[str, int], int]) -> tuple[dict[str, int], int]:
    counts = dict(a[0])
    for key, count in b[0].items():
        counts[key] = counts.get(key, 0) + count
    return counts, a[1] + b[1]


def profile_to_json(profile: dict[str, Any]) -> str:
    """The profile as JSON text (what gets logged next to the model)."""
    return json.dumps(profile, separators=(",", ":"), allow_nan=False)


def profile_from_json(text: str, source: str = "profile") -> dict[str, Any]:
    """Parse and check a profile; a typed error names the source when it is not one."""
    try:
        profile = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DriftError(f"{source} is not valid JSON: {exc}") from exc
    if not isinstance(profile, dict) or profile.get("format") != PROFILE_FORMAT:
        raise DriftError(f"{source} is not a loopline drift profile (no format {PROFILE_FORMAT!r})")
    if profile.get("version") != PROFILE_VERSION:
        raise DriftError(f"{source}: profile version {profile.get('version')} is not {PROFILE_VERSION}")
    return profile


def save_profile(profile: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write the profile as JSON (atomically: a reader never sees half a file)."""
    target = Path(path)
    atomic_write_text(target, profile_to_json(profile))
    return target


def load_profile(path: str | os.PathLike) -> dict[str, Any]:
    """Read a profile written by `save_profile` (or logged to MLflow as JSON)."""
    target = Path(path)
    try:
        text = target.read_text()
    except FileNotFoundError as exc:
        raise DriftError(f"profile file {target} does not exist") from exc
    return profile_from_json(text, source=f"profile file {target}")
