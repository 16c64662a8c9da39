"""Performance drift: once labels arrive (joined by id), compare the live metric with the evaluation one."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats

from loopline.errors import DriftError

DEFAULT_METRIC = {"binary": "roc_auc", "multiclass": "accuracy", "regression": "rmse"}
LOWER_IS_BETTER = frozenset({"rmse", "mae", "log_loss"})
METRICS = {
    "binary": ("roc_auc", "accuracy", "log_loss"),
    "multiclass": ("accuracy", "log_loss"),
    "regression": ("rmse", "mae"),
}
_EPS = 1e-15  # probability clip for log loss, as scikit-learn does


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve via the Mann-Whitney U statistic (ties get half credit); None for one class."""
    positives = y_true == 1
    n_pos = int(positives.sum())
    n_neg = len(y_true) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = stats.rankdata(scores)
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _positive_scores(y_pred: np.ndarray) -> np.ndarray:
    return y_pred[:, 1] if y_pred.ndim == 2 else y_pred


def compute_metric(metric: str, task: str, y_true: np.ndarray, y_pred: np.ndarray) -> float | None:
    """One metric of labelled predictions (probabilities for classification, values for regression)."""
    if metric == "roc_auc":
        return roc_auc(y_true, _positive_scores(y_pred))
    if metric == "accuracy":
        labels = np.argmax(y_pred, axis=1) if y_pred.ndim == 2 else (y_pred >= 0.5).astype(np.int64)
        return float(np.mean(labels == y_true))
    if metric == "log_loss":
        if task == "binary":
            p = np.clip(_positive_scores(y_pred), _EPS, 1 - _EPS)
            return float(-np.mean(y_true * np.log(p) + (1 - y_true) * np.log(1 - p)))
        p = np.clip(y_pred[np.arange(len(y_true)), y_true.astype(np.int64)], _EPS, 1.0)
        return float(-np.mean(np.log(p)))
    if metric == "rmse":
        return float(np.sqrt(np.mean((y_pred - y_true) ** 2)))
    if metric == "mae":
        return float(np.mean(np.abs(y_pred - y_true)))
    raise DriftError(f"unknown performance metric {metric!r}")


def performance_drift(
    y_true: np.ndarray,
    y_pred_proba: np.ndarray,
    reference_metric: float,
    task: str,
    tolerance: float,
    metric: str | None = None,
) -> dict[str, Any]:
    """Live metric vs the metric measured at evaluation; degraded when worse by more than `tolerance`.

    Rows without a label (NaN) are left out: labels arrive late and partially. `tolerance` is absolute,
    in the metric's unit. For binary tasks `y_pred_proba` is P(class 1) or an (n, 2) array.
    """
    if task not in METRICS:
        raise DriftError(f"unknown task {task!r} (expected one of {sorted(METRICS)})")
    metric = metric or DEFAULT_METRIC[task]
    if metric not in METRICS[task]:
        raise DriftError(f"metric {metric!r} does not apply to a {task} task (use one of {METRICS[task]})")
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred_proba, dtype=np.float64)
    if len(y_true) != len(y_pred):
        raise DriftError(f"{len(y_true)} labels for {len(y_pred)} predictions")
    labelled = ~np.isnan(y_true)
    y_true, y_pred = y_true[labelled], y_pred[labelled]
    current = compute_metric(metric, task, y_true, y_pred) if len(y_true) else None
    higher_is_better = metric not in LOWER_IS_BETTER
    out: dict[str, Any] = {
        "metric": metric,
        "current": current,
        "reference": float(reference_metric),
        "delta": None if current is None else current - float(reference_metric),
        "tolerance": float(tolerance),
        "higher_is_better": higher_is_better,
        "n_labelled": int(len(y_true)),
        "degraded": False,
    }
    if current is None:
        out["note"] = "no labelled rows" if len(y_true) == 0 else f"{metric} is undefined on one class"
        return out
    worse_by = (reference_metric - current) if higher_is_better else (current - reference_metric)
    out["degraded"] = bool(worse_by > tolerance)
    return out
