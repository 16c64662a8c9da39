"""Evaluation metrics with row weights, and a paired bootstrap of candidate minus champion.

Every metric is "prepared" once from labels and model outputs into per-row terms, then evaluated for any
vector of row weights. Weights of ones give the plain metric; multinomial counts give one bootstrap
replicate. So the reported metrics and the bootstrap share one implementation, and a replicate costs a few
weighted sums (ROC AUC included: ties are grouped once, not re-sorted per replicate). A matrix of weights
[replicates, rows] gives one value per replicate in a few array operations: the bootstrap evaluates a block
of replicates at once instead of paying Python's per-call overhead ~20 times per replicate.

Outputs by task: binary: P(positive class) [n]; multiclass: class probabilities [n, k]; regression: values [n].
Labels are encoded as in `loopline.features.encode_labels` (binary 0/1, multiclass class index).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

METRICS_BY_TASK: dict[str, tuple[str, ...]] = {
    "binary": ("roc_auc", "accuracy", "log_loss", "f1", "ece"),
    "multiclass": ("accuracy", "macro_f1", "log_loss"),
    "regression": ("rmse", "mae", "r2"),
}
DEFAULT_PRIMARY = {"binary": "roc_auc", "multiclass": "accuracy", "regression": "rmse"}
HIGHER_IS_BETTER = {
    "roc_auc": True,
    "accuracy": True,
    "f1": True,
    "macro_f1": True,
    "r2": True,
    "log_loss": False,
    "ece": False,
    "rmse": False,
    "mae": False,
}
PROBA_EPS = (
    1e-7  # log loss clips probabilities: a float32 model output of exactly 0 or 1 is not infinitely wrong
)
ECE_BINS = 15  # the common choice (Guo et al., 2017)
# above this many rows the bootstrap runs on subsets of b = max(this, n^0.7) rows ("bag of little bootstraps"):
# a replicate then costs b rows, not n (20k rows: 2k, 10x cheaper; 1M rows: 15.8k). Its standard error is held
# to the closed form of a mean difference at 20k and 100k rows (tests/unit/release/test_evaluate_metrics.py).
BLB_SUBSET_ROWS = 2_000
BLB_MAX_SUBSETS = 10

REPLICATE_BLOCK_ELEMENTS = 2**17  # [replicates, rows] weights at once: ~1 MB, so the counts stay in cache

# weights None (all ones) or [rows] -> float; weights [replicates, rows] -> [replicates]
WeightedMetric = Callable[[np.ndarray | None], Any]


def metric_names(task: str) -> tuple[str, ...]:
    return METRICS_BY_TASK[task]


def primary_metric_for(task: str, configured: str | None) -> str:
    """The configured primary metric, checked against the task; else the task's default."""
    from loopline.errors import ConfigError

    name = configured or DEFAULT_PRIMARY[task]
    if name not in METRICS_BY_TASK[task]:
        raise ConfigError(
            f"evaluation.primary_metric {name!r} does not apply to a {task} task; choose one of {METRICS_BY_TASK[task]}"
        )
    return name


def compute_metrics(task: str, y: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
    """Every metric of the task, unweighted."""
    return {name: float(prepare_metric(name, task, y, outputs)(None)) for name in METRICS_BY_TASK[task]}


def prepare_metric(name: str, task: str, y: np.ndarray, outputs: np.ndarray) -> WeightedMetric:
    """Precompute per-row terms; the returned function maps row weights (None: all ones) to the metric."""
    if name not in METRICS_BY_TASK[task]:
        raise ValueError(f"metric {name!r} is not defined for a {task} task")
    if task == "binary":
        return _prepare_binary(name, np.asarray(y, dtype=np.float64), np.asarray(outputs, dtype=np.float64))
    if task == "multiclass":
        return _prepare_multiclass(name, np.asarray(y, dtype=np.int64), np.asarray(outputs, dtype=np.float64))
    return _prepare_regression(name, np.asarray(y, dtype=np.float64), np.asarray(outputs, dtype=np.float64))


def _dot(a: np.ndarray, b: np.ndarray) -> Any:
    # einsum, not `@`: a BLAS dot may start threads, which costs milliseconds per call on a busy machine.
    # Sums over the last axis: [rows] -> float, [replicates, rows] -> [replicates]
    out = np.einsum("...i,...i->...", a, b)
    return float(out) if np.ndim(out) == 0 else out


def _wsum(values: np.ndarray, w: np.ndarray | None) -> Any:
    return float(values.sum()) if w is None else _dot(w, values)


def _total(n_rows: int, w: np.ndarray | None) -> Any:
    """The weight of all rows: n, or one total per replicate."""
    return n_rows if w is None else _scalar(w.sum(axis=-1))


def _ratio(numerator: Any, denominator: Any, otherwise: float = float("nan")) -> Any:
    """numerator / denominator where the denominator is > 0, else `otherwise`; elementwise for replicates."""
    if np.ndim(numerator) == 0 and np.ndim(denominator) == 0:
        return float(numerator) / float(denominator) if denominator > 0 else otherwise
    numerator, denominator = np.broadcast_arrays(np.asarray(numerator, float), np.asarray(denominator, float))
    out = np.full(numerator.shape, otherwise)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _scalar(value: Any) -> Any:
    return float(value) if np.ndim(value) == 0 else value


def _wmean(values: np.ndarray, w: np.ndarray | None) -> Any:
    return _ratio(_wsum(values, w), _total(len(values), w))


def _bincount(index: np.ndarray, values: np.ndarray | None, w: np.ndarray | None, size: int) -> np.ndarray:
    """Weighted counts per index value: [size], or [replicates, size] for a matrix of weights."""
    if values is None:
        weights = w
    else:
        weights = values if w is None else values * w
    if weights is None or weights.ndim == 1:
        return np.bincount(index, weights=weights, minlength=size).astype(np.float64)
    replicates = weights.shape[0]  # one bincount for all: replicate r counts into slots [r*size, (r+1)*size)
    flat = (index + size * np.arange(replicates)[:, None]).ravel()
    counts = np.bincount(flat, weights=weights.ravel(), minlength=replicates * size)
    return counts.reshape(replicates, size)


def _prepare_binary(name: str, y: np.ndarray, p: np.ndarray) -> WeightedMetric:
    if name == "roc_auc":
        # group tied scores once: AUC = sum over positives of (negatives below + half the tied ones)
        _, group = np.unique(p, return_inverse=True)
        n_groups = int(group.max()) + 1 if len(group) else 0
        # one bincount per replicate: slot 2g holds group g's negatives, 2g + 1 its positives
        slot = 2 * group.astype(np.int64) + (y > 0.5)
        # for a matrix of weights (a block of bootstrap replicates): the negatives in score order, and per
        # positive how many negatives score below it (lo) and below or tied (hi). A replicate is then a
        # cumulative sum of the negatives' weights and a gather at lo/hi, not a scatter into 2 * groups
        # slots per replicate. Same sums of integer-valued weights, so the same values to the last bit.
        sorted_negatives: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool]] = []

        def negatives_in_order() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool]:
            if not sorted_negatives:  # once, on the first block: plain metrics never need it
                is_pos = y > 0.5
                neg_rows = np.flatnonzero(~is_pos)
                neg_rows = neg_rows[np.argsort(group[neg_rows], kind="stable")]
                pos_rows = np.flatnonzero(is_pos)
                neg_groups = group[neg_rows]
                lo = np.searchsorted(neg_groups, group[pos_rows], side="left")
                hi = np.searchsorted(neg_groups, group[pos_rows], side="right")
                sorted_negatives.append((neg_rows, pos_rows, lo, hi, bool(np.array_equal(lo, hi))))
            return sorted_negatives[0]

        def roc_auc_block(w: np.ndarray) -> np.ndarray:
            neg_rows, pos_rows, lo, hi, untied = negatives_in_order()
            below = np.zeros((w.shape[0], len(neg_rows) + 1))
            np.cumsum(w[:, neg_rows], axis=1, out=below[:, 1:])  # below[:, j]: weight of the j lowest
            w_pos = w[:, pos_rows]
            if untied:
                numerator = _dot(w_pos, below[:, lo])
            else:
                numerator = _dot(w_pos, 0.5 * (below[:, lo] + below[:, hi]))
            return _ratio(numerator, w_pos.sum(axis=-1) * below[:, -1])

        def roc_auc(w: np.ndarray | None) -> Any:
            if w is not None and w.ndim == 2:
                return roc_auc_block(w)
            counts = _bincount(slot, None, w, 2 * n_groups)
            neg_g, pos_g = counts[..., 0::2], counts[..., 1::2]
            n_pos, n_neg = pos_g.sum(axis=-1), neg_g.sum(axis=-1)
            below = np.cumsum(neg_g, axis=-1) - neg_g
            # undefined (nan) with one class: n_pos * n_neg == 0
            return _ratio(_dot(pos_g, below + 0.5 * neg_g), n_pos * n_neg)

        return roc_auc
    predicted = (p >= 0.5).astype(np.float64)
    if name == "accuracy":
        correct = (predicted == y).astype(np.float64)
        return lambda w: _wmean(correct, w)
    if name == "log_loss":
        q = np.clip(p, PROBA_EPS, 1 - PROBA_EPS)
        loss = -(y * np.log(q) + (1 - y) * np.log1p(-q))
        return lambda w: _wmean(loss, w)
    if name == "f1":
        tp, fp, fn = predicted * y, predicted * (1 - y), (1 - predicted) * y

        def f1(w: np.ndarray | None) -> Any:
            a, b, c = _wsum(tp, w), _wsum(fp, w), _wsum(fn, w)
            return _ratio(2 * a, 2 * a + b + c, otherwise=0.0)

        return f1
    if name == "ece":
        # reliability of P(positive): per equal-width bin, |observed positive rate - mean predicted probability|
        bins = np.minimum((p * ECE_BINS).astype(np.int64), ECE_BINS - 1)
        bins = np.clip(bins, 0, ECE_BINS - 1)

        def ece(w: np.ndarray | None) -> Any:
            total = _total(len(bins), w)
            gap = np.abs(_bincount(bins, y, w, ECE_BINS) - _bincount(bins, p, w, ECE_BINS))
            return _ratio(_scalar(gap.sum(axis=-1)), total)

        return ece
    raise ValueError(name)


def _prepare_multiclass(name: str, y: np.ndarray, proba: np.ndarray) -> WeightedMetric:
    if proba.ndim != 2:
        raise ValueError(f"multiclass outputs must be class probabilities [n, k], got shape {proba.shape}")
    k = proba.shape[1]
    predicted = proba.argmax(axis=1)
    if name == "accuracy":
        correct = (predicted == y).astype(np.float64)
        return lambda w: _wmean(correct, w)
    if name == "log_loss":
        loss = -np.log(np.clip(proba[np.arange(len(y)), y], PROBA_EPS, 1.0))
        return lambda w: _wmean(loss, w)
    if name == "macro_f1":
        hit = (predicted == y).astype(np.float64)

        def macro_f1(w: np.ndarray | None) -> Any:
            tp = _bincount(y, hit, w, k)
            denom = _bincount(y, None, w, k) + _bincount(predicted, None, w, k)  # = 2tp + fp + fn
            present = denom > 0  # like scikit-learn: classes neither true nor predicted do not count
            per_class = _ratio(2 * tp, denom, otherwise=0.0)
            return _ratio(_scalar(per_class.sum(axis=-1)), _scalar(present.sum(axis=-1)))

        return macro_f1
    raise ValueError(name)


def _prepare_regression(name: str, y: np.ndarray, yhat: np.ndarray) -> WeightedMetric:
    err = yhat - y
    if name == "rmse":
        sq = err * err
        return lambda w: _scalar(np.sqrt(_wmean(sq, w)))
    if name == "mae":
        ab = np.abs(err)
        return lambda w: _wmean(ab, w)
    if name == "r2":
        sq, y2 = err * err, y * y

        def r2(w: np.ndarray | None) -> Any:
            total = _total(len(y), w)
            mean = _ratio(_wsum(y, w), total)
            ss_tot = _wsum(y2, w) - total * mean * mean  # nan where total is 0: r2 is nan there too
            return _scalar(1.0 - _ratio(_wsum(sq, w), np.where(np.isnan(ss_tot), 0.0, ss_tot)))

        return r2
    raise ValueError(name)


def bootstrap_difference(
    name: str,
    task: str,
    y: np.ndarray,
    candidate: np.ndarray,
    champion: np.ndarray,
    *,
    samples: int,
    seed: int,
    level: float = 0.95,
) -> dict[str, Any]:
    """Confidence interval of metric(candidate) - metric(champion), paired: both models see the same resampled rows.

    Up to BLB_SUBSET_ROWS rows this is the percentile bootstrap: each replicate resamples n rows with
    replacement, held as per-row counts (weights). Above, it is the bag of little bootstraps
    (Kleiner et al., 2014): a few random subsets of b >= n^0.7 rows, each resampled to full size n with
    Poisson(n/b) weights; the deviations from each subset's own estimate are pooled around the full-data
    estimate. Same coverage for smooth metrics, at a cost that grows like n^0.7, not n.
    """
    y = np.asarray(y)
    n = len(y)
    full = prepare_metric(name, task, y, candidate)(None) - prepare_metric(name, task, y, champion)(None)
    if n < 2:
        return _interval(name, full, np.array([]), level, samples, "none", n, n)
    rng = np.random.default_rng(seed)
    if n <= BLB_SUBSET_ROWS:
        subsets, b, method = 1, n, "bootstrap"
    else:
        subsets = max(1, min(BLB_MAX_SUBSETS, samples // 50))
        b, method = min(n, max(BLB_SUBSET_ROWS, int(n**0.7))), "bag-of-little-bootstraps"
    per_subset = max(1, samples // subsets)
    block = max(1, min(per_subset, REPLICATE_BLOCK_ELEMENTS // b))  # replicates evaluated at once
    poisson = PoissonSampler(n / b) if b < n else None
    deviations: list[np.ndarray] = []
    for _ in range(subsets):
        idx = np.arange(n) if b == n else np.sort(rng.choice(n, size=b, replace=False))
        ys = y[idx]
        cand = prepare_metric(name, task, ys, candidate[idx])
        champ = prepare_metric(name, task, ys, champion[idx])
        centre = cand(None) - champ(None)
        reps = np.empty(per_subset)
        for start in range(0, per_subset, block):
            m = min(block, per_subset - start)
            if b == n:  # the plain bootstrap: n rows drawn with replacement, as counts
                drawn = rng.integers(0, n, (m, n)) + n * np.arange(m)[:, None]
                w = np.bincount(drawn.ravel(), minlength=m * n).reshape(m, n).astype(np.float64)
            else:  # Poisson(n/b) counts: the multinomial resample of size n, drawn independently per row
                w = poisson.draw(rng, (m, b)).astype(np.float64)
            reps[start : start + m] = cand(w) - champ(w) - centre
        deviations.append(reps[np.isfinite(reps)])
    return _interval(name, full, deviations, level, subsets * per_subset, method, n, b)


class PoissonSampler:
    """Poisson(lam) draws by inversion of the CDF with a guide table: one uniform per draw and a pass or two
    of array lookups, ~3x cheaper than `Generator.poisson` (PTRS: logs and a log-gamma per draw), which was
    most of the bootstrap's time. Exact up to float64 rounding of the CDF; the tail beyond
    lam + 12 sqrt(lam) + 30 (probability < 1e-30) folds into the last value."""

    GUIDE_SLOTS = 1024

    def __init__(self, lam: float):
        k = np.arange(int(lam + 12 * np.sqrt(lam) + 30))
        log_pmf = -lam + k * np.log(lam) - np.cumsum(np.log(np.maximum(k, 1)))  # log(lam^k e^-lam / k!)
        cdf = np.cumsum(np.exp(log_pmf))
        self.cdf = np.append(cdf[:-1], np.inf)  # the last value takes whatever rounding left over
        # guide[j]: the draw for u = j / slots; a draw starts there and steps up past every cdf <= u
        self.guide = np.searchsorted(self.cdf, np.arange(self.GUIDE_SLOTS) / self.GUIDE_SLOTS, side="right")

    def draw(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        u = rng.random(shape).ravel()
        k = self.guide[(u * self.GUIDE_SLOTS).astype(np.intp)]
        behind = np.flatnonzero(u >= self.cdf[k])  # draws whose slot holds more than one value: a few %
        while behind.size:
            k[behind] += 1
            behind = behind[u[behind] >= self.cdf[k[behind]]]
        return k.reshape(shape)


def _interval(name, estimate, deviations, level, samples, method, n, b) -> dict[str, Any]:
    alpha = (1 - level) / 2
    lows, highs, sds = [], [], []
    for dev in deviations if isinstance(deviations, list) else []:
        if len(dev) >= 2:
            lows.append(np.quantile(dev, alpha))
            highs.append(np.quantile(dev, 1 - alpha))
            sds.append(dev.std(ddof=1))
    finite = np.isfinite(estimate) and bool(lows)
    return {
        "metric": name,
        "higher_is_better": HIGHER_IS_BETTER[name],
        "estimate": float(estimate),
        "low": float(estimate + np.mean(lows)) if finite else float("nan"),
        "high": float(estimate + np.mean(highs)) if finite else float("nan"),
        "std_error": float(np.mean(sds)) if finite else float("nan"),
        "level": level,
        "samples": int(samples),
        "method": method,
        "rows": int(n),
        "subset_rows": int(b),
    }


def improvement(name: str, candidate_value: float, champion_value: float) -> float:
    """Candidate over champion, oriented so that positive is better (error metrics are negated)."""
    delta = candidate_value - champion_value
    return delta if HIGHER_IS_BETTER[name] else -delta


def improvement_bounds(ci: dict[str, Any]) -> tuple[float, float]:
    """The CI of candidate - champion turned into a CI of the improvement (positive = better)."""
    if ci["higher_is_better"]:
        return ci["low"], ci["high"]
    return -ci["high"], -ci["low"]


def clears_floor(name: str, value: float, floor: float | None) -> bool:
    """min_score is a floor for higher-is-better metrics and a ceiling for error metrics (rmse <= min_score)."""
    if floor is None:
        return True
    if not np.isfinite(value):
        return False
    return value >= floor if HIGHER_IS_BETTER[name] else value <= floor
