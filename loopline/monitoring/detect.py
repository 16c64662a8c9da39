"""Compare a current window with a reference profile: per-feature scores, the verdict, the report.

The current side is summarised on the reference's edges (sort each column once, then binary-search the
edges into it), so a window costs a sort per numeric column and a value count per categorical one, and
streams through `DriftAccumulator.update` chunk by chunk in bounded memory.

Default methods follow Evidently's DataDriftPreset: a feature whose reference has at most
`small_reference_rows` values gets KS (numeric) or chi-square (categorical; on two categories this is
Evidently's z-test), a larger one normed Wasserstein (numeric) or Jensen-Shannon (categorical); a numeric
feature with at most 5 distinct values (reference and current together) is tested like a categorical.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from loopline.config import DriftConfig
from loopline.errors import ConfigError, DriftError
from loopline.monitoring import methods as m
from loopline.monitoring.binning import (
    LOW_CARDINALITY_MAX,
    NumericSummary,
    ks_statistic_binned,
    wasserstein_binned,
)
from loopline.monitoring.profile import (
    column_as_float,
    count_categories,
    prediction_kind,
    prediction_labels,
    reference_summary,
    reference_values,
)

# Wasserstein is normed by the reference std, floored as Evidently floors it (constant columns)
STD_FLOOR = 0.001
# below this many rows a chunk's numeric columns are summarised in one thread (pool overhead)
PARALLEL_MIN_ROWS = 100_000
PREDICTION = "prediction"


@dataclass
class DriftReport:
    """The verdict and per-feature results. `to_dict()` is the CLI's JSON."""

    drift_detected: bool
    drift_share: float
    prediction_drift: bool
    features: dict[str, dict[str, Any]]
    n_reference: int
    n_current: int
    share_threshold: float
    n_drifted: int
    n_features: int
    correction: str = "none"
    prediction: dict[str, Any] | None = None
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def drifted_features(self) -> list[str]:
        return [name for name, result in self.features.items() if result["drift"]]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["drifted_features"] = self.drifted_features
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DriftReport:
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**fields)


@dataclass
class _NumericColumn:
    entry: dict[str, Any]
    reference: NumericSummary
    current: NumericSummary
    reference_values: dict[str, int] | None


@dataclass
class _CategoricalColumn:
    entry: dict[str, Any]
    counts: dict[str, int] = field(default_factory=dict)
    n_missing: int = 0


def _numeric_column(entry: dict[str, Any], bins: int) -> _NumericColumn:
    ref = reference_summary(entry, bins)
    cur = NumericSummary(edges=ref.edges, coarse_edges=ref.coarse_edges)
    values = reference_values(entry)
    if values is not None:
        cur.values = {}
    if "raw" in entry:  # small reference: keep a small current raw too, for scipy-exact results
        cur.raw, cur.raw_max = [], m.KS_EXACT_MAX_N
    return _NumericColumn(entry, ref, cur, values)


class DriftAccumulator:
    """Streams a current window through the profile: `update(chunk)` any number of times, then `finish(cfg)`."""

    def __init__(self, profile: dict[str, Any]):
        self.profile = profile
        bins = int(profile["bins"])
        self._numeric = {
            name: _numeric_column(entry, bins) for name, entry in profile["numeric"].items() if entry["n"] > 0
        }
        self._categorical = {
            name: _CategoricalColumn(entry)
            for name, entry in profile["categorical"].items()
            if entry["n"] > 0
        }
        self._skipped = {
            name: "no reference values"
            for section in ("numeric", "categorical")
            for name, entry in profile[section].items()
            if entry["n"] == 0
        }
        self._prediction: _NumericColumn | _CategoricalColumn | None = None
        pred = profile.get("prediction")
        if pred and pred["n"] > 0:
            self._prediction = (
                _numeric_column(pred, bins) if pred["kind"] == "numeric" else _CategoricalColumn(pred)
            )
        self._prediction_rows = 0
        self._predictions_ignored = False
        self.n_current = 0

    def update(self, chunk: pd.DataFrame, predictions: np.ndarray | None = None) -> None:
        """Add a chunk of the current window (columns by name; extra columns are ignored)."""
        arrays = {name: column_as_float(chunk, name, "current") for name in self._numeric}
        jobs = [(self._numeric[name].current, values) for name, values in arrays.items()]
        if len(chunk) >= PARALLEL_MIN_ROWS and (os.cpu_count() or 1) > 1 and len(jobs) > 1:
            # numpy's sort and searchsorted release the GIL: columns summarise in parallel
            with ThreadPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1)) as pool:
                list(pool.map(lambda job: job[0].add(job[1]), jobs))
        else:
            for summary, values in jobs:
                summary.add(values)
        for name, column in self._categorical.items():
            counts, missing = count_categories(chunk, name, "current")
            _add_counts(column, counts, missing)
        if predictions is not None and self._prediction is None:
            self._predictions_ignored = True
        if predictions is not None and self._prediction is not None:
            if len(predictions) != len(chunk):
                raise DriftError(f"{len(predictions)} predictions for a chunk of {len(chunk)} rows")
            if prediction_kind(predictions) != self._prediction.entry["kind"]:
                raise DriftError(
                    f"predictions are {prediction_kind(predictions)} but the reference profiled "
                    f"{self._prediction.entry['kind']} predictions"
                )
            frame = prediction_labels(predictions)
            if isinstance(self._prediction, _NumericColumn):
                self._prediction.current.add(column_as_float(frame, PREDICTION, "current"))
            else:
                _add_counts(self._prediction, *count_categories(frame, PREDICTION, "current"))
            self._prediction_rows += len(chunk)
        self.n_current += len(chunk)

    def finish(self, cfg: DriftConfig | None = None) -> DriftReport:
        """Score every feature, correct p-values if asked, and decide."""
        cfg = cfg or DriftConfig()
        features: dict[str, dict[str, Any]] = {}
        skipped = dict(self._skipped)
        if self._predictions_ignored:
            skipped[PREDICTION] = "the reference profile has no predictions"
        for name, column in {**self._numeric, **self._categorical}.items():
            result = _score(name, column, cfg.methods.get(name), cfg)
            if result is None:
                skipped[name] = "no current values"
            else:
                features[name] = result
        _apply_correction(features, cfg.correction)
        n_drifted = sum(result["drift"] for result in features.values())
        share = n_drifted / len(features) if features else 0.0
        prediction = None
        if self._prediction is not None and self._prediction_rows > 0:
            prediction = _score(PREDICTION, self._prediction, cfg.prediction_method, cfg)
        prediction_drift = bool(prediction and prediction["drift"])
        return DriftReport(
            drift_detected=bool((features and share >= cfg.share_threshold) or prediction_drift),
            drift_share=share,
            prediction_drift=prediction_drift,
            features=features,
            n_reference=int(self.profile["n_rows"]),
            n_current=self.n_current,
            share_threshold=cfg.share_threshold,
            n_drifted=n_drifted,
            n_features=len(features),
            correction=cfg.correction,
            prediction=prediction,
            skipped=skipped,
        )


def detect_drift(
    profile: dict[str, Any],
    current: pd.DataFrame,
    cfg: DriftConfig | None = None,
    predictions: np.ndarray | None = None,
) -> DriftReport:
    """Drift of one in-memory window against a reference profile (see `DriftAccumulator` for chunks)."""
    accumulator = DriftAccumulator(profile)
    accumulator.update(current, predictions)
    return accumulator.finish(cfg)


def _add_counts(column: _CategoricalColumn, counts: dict[str, int], missing: int) -> None:
    for key, count in counts.items():
        column.counts[key] = column.counts.get(key, 0) + count
    column.n_missing += missing


def _default_method(column: _NumericColumn | _CategoricalColumn, cfg: DriftConfig) -> str:
    small = column.entry["n"] <= cfg.small_reference_rows
    if isinstance(column, _NumericColumn) and not _low_cardinality(column):
        return "ks" if small else "wasserstein"
    return "chisquare" if small else "jensenshannon"


def _low_cardinality(column: _NumericColumn) -> bool:
    if column.reference_values is None or column.current.values is None:
        return False
    return len(set(column.reference_values) | set(column.current.values)) <= LOW_CARDINALITY_MAX


def _score(
    name: str, column: _NumericColumn | _CategoricalColumn, method: str | None, cfg: DriftConfig
) -> dict[str, Any] | None:
    """{method, score, threshold, drift, kind, ...} for one column; None when the window has no values."""
    numeric = isinstance(column, _NumericColumn)
    n_current = column.current.n if numeric else sum(column.counts.values())
    if n_current == 0:
        return None
    method = method or _default_method(column, cfg)
    if not numeric and method not in m.CATEGORICAL_METHODS:
        raise ConfigError(
            f"drift.methods[{name!r}]: {method!r} needs a numeric column; {name!r} is categorical"
        )
    threshold = float(cfg.thresholds.get(method, m.DEFAULT_THRESHOLDS[method]))
    if numeric:
        score, extra = _score_numeric(column, method)
    else:
        score, extra = _score_counts(method, *m.align_counts(column.entry["frequencies"], column.counts)[1:])
    return {
        "method": method,
        "score": score,
        "threshold": threshold,
        "drift": _decide(method, score, threshold),
        "kind": "numeric" if numeric else "categorical",
        "n_current": int(n_current),
        **extra,
    }


def _score_numeric(column: _NumericColumn, method: str) -> tuple[float, dict[str, Any]]:
    ref, cur = column.reference, column.current
    raw_ref = np.asarray(column.entry["raw"]) if "raw" in column.entry else None
    raw_cur = cur.raw_values()
    exact = raw_ref is not None and raw_cur is not None
    if method == "wasserstein":
        distance = stats.wasserstein_distance(raw_ref, raw_cur) if exact else wasserstein_binned(ref, cur)
        std = max(float(column.entry["std"]), STD_FLOOR)
        return float(distance) / std, {"wasserstein": float(distance), "current_mean": cur.mean}
    if method == "ks":
        if exact:
            result = stats.ks_2samp(raw_ref, raw_cur)
            return float(result.pvalue), {"statistic": float(result.statistic)}
        d = ks_statistic_binned(ref, cur)
        return m.ks_pvalue_asymptotic(d, ref.n, cur.n), {"statistic": d}
    if column.reference_values is not None and column.current.values is not None:
        _, ref_counts, cur_counts = m.align_counts(column.reference_values, column.current.values)
    else:
        ref_counts, cur_counts = ref.coarse_counts, cur.coarse_counts
    return _score_counts(method, ref_counts, cur_counts)


def _score_counts(
    method: str, ref_counts: np.ndarray, cur_counts: np.ndarray
) -> tuple[float, dict[str, Any]]:
    if method == "psi":
        return m.psi(ref_counts, cur_counts), {}
    if method == "jensenshannon":
        return m.jensen_shannon(ref_counts, cur_counts), {}
    if method == "chisquare":
        statistic, pvalue = m.chi_square(ref_counts, cur_counts)
        return pvalue, {"statistic": statistic}
    raise ConfigError(f"drift method {method!r} does not apply to counts")


def _decide(method: str, score: float, threshold: float) -> bool:
    if method in m.P_VALUE_METHODS:
        return bool(score < threshold)
    return bool(score >= threshold)


def _apply_correction(features: dict[str, dict[str, Any]], correction: str) -> None:
    """Re-decide p-value features on adjusted p-values (the raw p stays the score)."""
    if correction == "none":
        return
    names = [name for name, result in features.items() if result["method"] in m.P_VALUE_METHODS]
    adjusted = m.adjust_pvalues(np.array([features[n]["score"] for n in names]), correction)
    for name, p_adjusted in zip(names, adjusted, strict=True):
        features[name]["p_adjusted"] = float(p_adjusted)
        features[name]["drift"] = bool(p_adjusted < features[name]["threshold"])
