"""Losses and validation metrics per task (binary, multiclass, regression)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# Metrics where larger is better; every other metric (losses, errors) is minimised.
MAXIMISED = frozenset({"roc_auc", "accuracy", "r2"})


def loss_fn(task: str, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean loss for one batch. Regression targets arrive standardised."""
    if task == "binary":
        return F.binary_cross_entropy_with_logits(outputs.squeeze(-1).float(), target)
    if task == "multiclass":
        return F.cross_entropy(outputs.float(), target)
    return F.mse_loss(outputs.squeeze(-1).float(), target)


def is_better(metric: str, value: float, best: float | None) -> bool:
    if best is None:
        return True
    return value > best if metric in MAXIMISED else value < best


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann-Whitney AUC with average ranks for ties; NaN when only one class is present."""
    labels = labels.astype(bool)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size, dtype=np.float64)
    # average rank over each run of equal scores
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [scores.size]])
    avg = (starts + ends + 1) / 2.0  # 1-based average rank of the run
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def validation_metrics(
    task: str,
    outputs: torch.Tensor,
    target: torch.Tensor,
    *,
    target_mean: float = 0.0,
    target_std: float = 1.0,
) -> dict[str, float]:
    """Metrics on the whole validation split. `outputs` are raw model outputs (float32, CPU)."""
    metrics = {"val_loss": float(loss_fn(task, outputs, target))}
    if task == "binary":
        prob = torch.sigmoid(outputs.squeeze(-1)).numpy()
        labels = target.numpy()
        metrics["accuracy"] = float(((prob >= 0.5) == (labels >= 0.5)).mean())
        metrics["roc_auc"] = roc_auc(prob, labels)
    elif task == "multiclass":
        metrics["accuracy"] = float((outputs.argmax(-1) == target).float().mean())
    else:
        pred = outputs.squeeze(-1).double() * target_std + target_mean
        truth = target.double() * target_std + target_mean
        err = pred - truth
        metrics["rmse"] = float(err.pow(2).mean().sqrt())
        metrics["mae"] = float(err.abs().mean())
        var = float((truth - truth.mean()).pow(2).mean())
        metrics["r2"] = 1.0 - float(err.pow(2).mean()) / var if var > 0 else float("nan")
    return metrics
