"""Binned summaries of one numeric column, shared by the reference profile and the current window.

A summary on edges e_0 < ... < e_K (taken from the reference) has K+2 bins: (-inf, e_0), [e_0, e_1),
..., [e_{K-1}, e_K), [e_K, inf). Per bin it keeps the count and the sum of (x - anchor), the anchor being
the bin's left edge (e_0 for the open bin below). Per edge it keeps how many values equal it. From
these, two CDFs on the same edges give:

- KS: F(e_k-) and F(e_k) exactly at every edge, so sup |F_ref - F_cur| is exact when the edges are all
  distinct reference values (small references) and off by at most one bin's mass otherwise;
- Wasserstein-1 = integral |F_ref - F_cur| dx: the integral of a CDF over a bin is exact from count and
  offset (integral_a^b F = F(a)(b-a) + sum_{a<=x<b} (b-x)/n), so the distance is exact except inside a bin
  where the two CDFs cross (there it is a lower bound; the bins are 1/K of the reference mass).
  Outside [e_0, e_K] the reference CDF is 0 or 1 and the integral is exact from the offsets alone, so a
  current window far outside the reference range costs nothing extra and needs no range up front.

Everything is additive over chunks, so a window of any length streams through in bounded memory.
Offsets are sums of (x - left edge), not of x: with a large common offset (years, prices) sums of x
would lose the within-bin detail to cancellation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# a low-cardinality numeric column is tested like a categorical one (Evidently: <= 5 distinct values)
LOW_CARDINALITY_MAX = 5
# distinct values tracked per current column before giving up (only > LOW_CARDINALITY_MAX matters)
TRACKED_VALUES_MAX = 64


def sort_finite(values: np.ndarray, *, in_place: bool = False) -> tuple[np.ndarray, int]:
    """Sorted finite values and how many were NaN or +-inf (dropped, as Evidently drops them).

    `in_place` sorts the caller's float64 array itself (no copy): only for arrays nobody else holds.
    """
    xs = np.asarray(values, dtype=np.float64)
    if in_place:
        xs.sort()  # NaN sorts last, after +inf
    else:
        xs = np.sort(xs)
    lo = int(np.searchsorted(xs, -np.inf, side="right"))
    hi = int(np.searchsorted(xs, np.inf, side="left"))
    return xs[lo:hi], len(xs) - (hi - lo)


def number_key(value: float) -> str:
    """JSON object key for a numeric value (the same for reference and current)."""
    return repr(float(value))


def order_statistic_edges(xs: np.ndarray, n_bins: int) -> np.ndarray:
    """Distinct data values at the quantiles k/n_bins (k = 0..n_bins) of sorted `xs`.

    Edges are actual data values (order statistics), so ties in discrete data land exactly on edges.
    """
    positions = np.round(np.linspace(0, len(xs) - 1, n_bins + 1)).astype(np.int64)
    return np.unique(xs[positions])


@dataclass
class NumericSummary:
    """Additive binned summary of one numeric column on fixed edges (see the module docstring)."""

    edges: np.ndarray
    coarse_edges: np.ndarray  # inner edges of the coarse (PSI / Jensen-Shannon) histogram
    n: int = 0
    n_missing: int = 0
    counts: np.ndarray = field(default=None)  # type: ignore[assignment]  # K+2
    offsets: np.ndarray = field(default=None)  # type: ignore[assignment]  # K+2
    equal: np.ndarray = field(default=None)  # type: ignore[assignment]  # K+1
    coarse_counts: np.ndarray = field(default=None)  # type: ignore[assignment]
    total: float = 0.0
    minimum: float = np.inf
    maximum: float = -np.inf
    # distinct value -> count while there are at most TRACKED_VALUES_MAX of them; None: too many / off
    values: dict[str, int] | None = None
    # the raw values while the column has at most `raw_max` of them (exact scipy parity on small data)
    raw: list[np.ndarray] | None = None
    raw_max: int = 0

    def __post_init__(self) -> None:
        k = len(self.edges)
        if self.counts is None:
            self.counts = np.zeros(k + 1, dtype=np.int64)
            self.offsets = np.zeros(k + 1, dtype=np.float64)
            self.equal = np.zeros(k, dtype=np.int64)
            self.coarse_counts = np.zeros(len(self.coarse_edges) + 1, dtype=np.int64)

    def add(self, values: np.ndarray) -> None:
        """Add a chunk of raw values (any order, NaN/inf allowed and counted as missing)."""
        xs, dropped = sort_finite(values)
        self.add_sorted(xs, dropped)

    def add_sorted(self, xs: np.ndarray, dropped: int = 0) -> None:
        """Add sorted finite values (`dropped`: how many NaN/inf were removed before)."""
        self.n_missing += dropped
        n = len(xs)
        if n == 0:
            return
        edges = self.edges
        left = np.searchsorted(xs, edges, side="left")
        right = np.searchsorted(xs, edges, side="right")
        counts = np.diff(np.concatenate(([0], left, [n])))
        anchors = np.concatenate((edges[:1], edges))
        bin_of = np.repeat(np.arange(len(counts)), counts)
        occupied = counts > 0
        offsets = np.zeros(len(counts))
        # segment sums over the sorted values (reduceat: ~5x faster than a weighted bincount)
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))[occupied]
        offsets[occupied] = np.add.reduceat(xs - anchors[bin_of], starts)
        coarse = np.diff(np.concatenate(([0], np.searchsorted(xs, self.coarse_edges, side="left"), [n])))
        self.counts += counts
        self.offsets += offsets
        self.equal += right - left
        self.coarse_counts += coarse
        self.n += n
        self.total += float(xs.sum())
        self.minimum = min(self.minimum, float(xs[0]))
        self.maximum = max(self.maximum, float(xs[-1]))
        if self.values is not None:
            self._add_values(xs)
        if self.raw is not None:
            if self.n <= self.raw_max:
                self.raw.append(xs)
            else:
                self.raw = None

    def _add_values(self, xs: np.ndarray) -> None:
        starts = np.flatnonzero(np.concatenate(([True], xs[1:] != xs[:-1])))
        if len(starts) > TRACKED_VALUES_MAX:
            self.values = None
            return
        counts = np.diff(np.concatenate((starts, [len(xs)])))
        for value, count in zip(xs[starts], counts, strict=True):
            key = number_key(value)
            self.values[key] = self.values.get(key, 0) + int(count)  # type: ignore[index]
        if len(self.values) > TRACKED_VALUES_MAX:  # type: ignore[arg-type]
            self.values = None

    def raw_values(self) -> np.ndarray | None:
        """All values seen, when there were at most `raw_max` of them."""
        if self.raw is None:
            return None
        return np.sort(np.concatenate(self.raw)) if self.raw else np.empty(0)

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else float("nan")


def cdf_at_edges(summary: NumericSummary) -> tuple[np.ndarray, np.ndarray]:
    """(F(e_k-), F(e_k)) for every edge: the shares of values below and at-or-below each edge."""
    below = np.cumsum(summary.counts)[:-1] / summary.n
    return below, below + summary.equal / summary.n


def ks_statistic_binned(ref: NumericSummary, cur: NumericSummary) -> float:
    """sup |F_ref - F_cur| over the edges, from both sides (exact on distinct reference values)."""
    ref_below, ref_at = cdf_at_edges(ref)
    cur_below, cur_at = cdf_at_edges(cur)
    return float(max(np.max(np.abs(ref_below - cur_below)), np.max(np.abs(ref_at - cur_at))))


def _bin_integrals(summary: NumericSummary, widths: np.ndarray) -> tuple[float, np.ndarray, float]:
    """Integral of F below e_0, of F over each inner bin, and of 1-F above e_K."""
    n = summary.n
    share_before = np.cumsum(summary.counts)[:-2] / n  # F(e_k-) for k = 0..K-1
    inner_counts = summary.counts[1:-1]
    inner_offsets = summary.offsets[1:-1]
    inner = share_before * widths + (inner_counts * widths - inner_offsets) / n
    return -summary.offsets[0] / n, inner, summary.offsets[-1] / n


def wasserstein_binned(ref: NumericSummary, cur: NumericSummary) -> float:
    """Wasserstein-1 distance from two summaries on the same edges (see the module docstring)."""
    widths = np.diff(ref.edges)
    ref_low, ref_inner, ref_high = _bin_integrals(ref, widths)
    cur_low, cur_inner, cur_high = _bin_integrals(cur, widths)
    return float(abs(ref_low - cur_low) + np.abs(ref_inner - cur_inner).sum() + abs(ref_high - cur_high))
