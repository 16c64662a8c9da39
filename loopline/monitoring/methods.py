"""Drift scores on counts: PSI, Jensen-Shannon, chi-square, the KS p-value, multiple-testing correction.

Scores follow Evidently's definitions so verdicts are comparable: PSI with Evidently's zero filling,
Jensen-Shannon distance with natural log (scipy's default), normed Wasserstein = W1 / max(std_ref, 0.001).
One deliberate difference: chi-square is the two-sample test of homogeneity (scipy's
`chi2_contingency(correction=False)`), because the reference is a sample too; Evidently's goodness-of-fit
variant treats the reference frequencies as exact and flags sampling noise of a small reference as drift.
On two categories this test is exactly Evidently's two-proportion z-test (chi2 = z^2).
"""

from __future__ import annotations

import numpy as np
from scipy import stats
from scipy.spatial import distance

METHODS = ("psi", "ks", "wasserstein", "jensenshannon", "chisquare")
P_VALUE_METHODS = frozenset({"ks", "chisquare"})  # drift when p < threshold; the others: score >= threshold
CATEGORICAL_METHODS = frozenset({"psi", "jensenshannon", "chisquare"})
# Evidently's defaults: p < 0.05 for tests, 0.1 for distances (PSI: < 0.1 no drift, > 0.25 major)
DEFAULT_THRESHOLDS = {"psi": 0.1, "ks": 0.05, "wasserstein": 0.1, "jensenshannon": 0.1, "chisquare": 0.05}
# scipy.stats.ks_2samp computes exact p-values up to this sample size, asymptotic ones above it
KS_EXACT_MAX_N = 10_000


def shares(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    return counts / counts.sum()


def fill_zeroes(p: np.ndarray) -> np.ndarray:
    """Evidently's zero filling before PSI: zeros become 1e-4, or min/1e6 when the minimum is smaller."""
    out = p.copy()
    smallest = out[out > 0].min()
    out[out == 0] = smallest / 1e6 if smallest <= 1e-4 else 1e-4
    return out


def psi(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    """Population stability index over matching bins or categories."""
    p = fill_zeroes(shares(ref_counts))
    q = fill_zeroes(shares(cur_counts))
    return float(np.sum((p - q) * np.log(p / q)))


def jensen_shannon(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    """Jensen-Shannon distance (natural log, as scipy and Evidently)."""
    return float(distance.jensenshannon(shares(ref_counts), shares(cur_counts)))


def chi_square(ref_counts: np.ndarray, cur_counts: np.ndarray) -> tuple[float, float]:
    """(statistic, p-value) of Pearson's chi-square test of homogeneity on a 2 x k table."""
    table = np.vstack([ref_counts, cur_counts]).astype(np.float64)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:  # one category on both sides: nothing can differ
        return 0.0, 1.0
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
    statistic = float(np.sum((table - expected) ** 2 / expected))
    return statistic, float(stats.chi2.sf(statistic, table.shape[1] - 1))


def ks_pvalue_asymptotic(statistic: float, n_ref: int, n_cur: int) -> float:
    """Two-sided KS p-value as scipy.stats.ks_2samp computes it for large samples."""
    m, n = sorted([float(n_ref), float(n_cur)], reverse=True)
    effective_n = max(1.0, np.round(m * n / (m + n)))
    return float(np.clip(stats.kstwo.sf(statistic, effective_n), 0.0, 1.0))


def align_counts(ref: dict[str, int], cur: dict[str, int]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Both count vectors over the union of keys (sorted, so results do not depend on order)."""
    keys = sorted(set(ref) | set(cur))
    return (
        keys,
        np.array([ref.get(k, 0) for k in keys], dtype=np.float64),
        np.array([cur.get(k, 0) for k in keys], dtype=np.float64),
    )


def adjust_pvalues(pvalues: np.ndarray, method: str) -> np.ndarray:
    """Multiple-testing adjusted p-values: 'none', 'bonferroni' (family-wise) or 'fdr_bh' (Benjamini-Hochberg)."""
    p = np.asarray(pvalues, dtype=np.float64)
    m = len(p)
    if method == "none" or m == 0:
        return p.copy()
    if method == "bonferroni":
        return np.minimum(p * m, 1.0)
    if method == "fdr_bh":
        order = np.argsort(p)
        scaled = p[order] * m / np.arange(1, m + 1)
        monotone = np.minimum.accumulate(scaled[::-1])[::-1]  # step-up: q_(i) = min_{j>=i} p_(j) m / j
        out = np.empty(m)
        out[order] = np.minimum(monotone, 1.0)
        return out
    raise ValueError(f"unknown correction {method!r}")
