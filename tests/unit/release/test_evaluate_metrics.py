"""Weighted metrics agree with scikit-learn; the paired bootstrap covers what it should."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from loopline.errors import ConfigError
from loopline.release.metrics import (
    BLB_SUBSET_ROWS,
    PoissonSampler,
    bootstrap_difference,
    clears_floor,
    compute_metrics,
    improvement,
    improvement_bounds,
    prepare_metric,
    primary_metric_for,
)


def _binary(n=4000, seed=0, signal=1.5):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n).astype(np.float64)
    z = signal * (y - 0.5) + rng.normal(0, 1, n)
    p = 1 / (1 + np.exp(-z))
    return y, p


def test_binary_metrics_match_sklearn():
    y, p = _binary()
    p = np.round(p, 2)  # plenty of ties: the grouped AUC must handle them like sklearn
    m = compute_metrics("binary", y, p)
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, p >= 0.5))
    assert m["f1"] == pytest.approx(skm.f1_score(y, p >= 0.5))
    q = np.clip(p, 1e-7, 1 - 1e-7)
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, q), rel=1e-9)
    assert 0 <= m["ece"] < 0.2


def test_weights_equal_repeated_rows():
    y, p = _binary(n=500, seed=3)
    w = np.random.default_rng(1).integers(0, 4, len(y)).astype(np.float64)
    rep = np.repeat(np.arange(len(y)), w.astype(int))
    for name in ("roc_auc", "accuracy", "log_loss", "f1", "ece"):
        weighted = prepare_metric(name, "binary", y, p)(w)
        repeated = prepare_metric(name, "binary", y[rep], p[rep])(None)
        assert weighted == pytest.approx(repeated, rel=1e-9, abs=1e-12), name


@pytest.mark.parametrize(
    "task, names",
    [
        ("binary", ("roc_auc", "accuracy", "log_loss", "f1", "ece")),
        ("multiclass", ("accuracy", "macro_f1", "log_loss")),
        ("regression", ("rmse", "mae", "r2")),
    ],
)
def test_a_matrix_of_weights_gives_every_replicate_at_once(task, names):
    # the bootstrap evaluates a block of replicates in one call: row r of the weights is replicate r
    rng = np.random.default_rng(4)
    n = 300
    if task == "binary":
        y, out = _binary(n=n, seed=4)
        out = np.round(out, 2)  # ties
    elif task == "multiclass":
        y = rng.integers(0, 3, n)
        out = rng.dirichlet(np.ones(3), n)
    else:
        y = rng.normal(0, 1, n)
        out = y + rng.normal(0, 0.5, n)
    w = rng.poisson(1.0, (6, n)).astype(np.float64)
    w[1] = 0.0  # no rows at all: every metric is undefined (nan) or 0 like the one-replicate call says
    for name in names:
        metric = prepare_metric(name, task, y, out)
        batched = metric(w)
        assert batched.shape == (6,), name
        one_by_one = [metric(row) for row in w]
        assert all(isinstance(v, float) for v in one_by_one), name
        np.testing.assert_allclose(batched, one_by_one, rtol=1e-12, atol=1e-12, err_msg=name)
        for row in (0, 2):  # and the same as repeating rows with the unweighted metric
            repeated = np.repeat(np.arange(n), w[row].astype(int))
            expected = prepare_metric(name, task, y[repeated], out[repeated])(None)
            assert batched[row] == pytest.approx(expected, rel=1e-9, abs=1e-12), name


@pytest.mark.parametrize("ties", [False, True])
def test_a_block_of_auc_replicates_is_exactly_the_one_at_a_time_auc(ties):
    # the block path (sorted negatives, a cumulative sum per replicate) and the grouped one-replicate path
    # sum the same integer weights: equal to the last bit, so the bootstrap interval is unchanged
    y, p = _binary(n=2000, seed=7)
    if ties:
        p = np.round(p, 2)
    w = np.random.default_rng(8).poisson(3.0, (40, len(y)))
    w[3] = 0
    w[4, y == 1] = 0  # one class only: undefined
    metric = prepare_metric("roc_auc", "binary", y, p)
    block = metric(w.astype(np.float64))
    one_by_one = np.array([metric(row.astype(np.float64)) for row in w])
    np.testing.assert_array_equal(block, one_by_one)
    assert np.isnan(block[3]) and np.isnan(block[4])
    assert block[0] == pytest.approx(skm.roc_auc_score(y, p, sample_weight=w[0]), abs=1e-12)


def test_ece_of_a_calibrated_model_is_small_and_of_a_confident_wrong_one_large():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 200_000)
    y = (rng.uniform(0, 1, len(p)) < p).astype(float)
    assert compute_metrics("binary", y, p)["ece"] < 0.01
    assert compute_metrics("binary", y, np.where(p > 0.5, 0.01, 0.99))["ece"] > 0.5


def test_multiclass_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    n, k = 3000, 4
    y = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), y] += 1.0
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    m = compute_metrics("multiclass", y, proba)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, proba.argmax(1)))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, proba.argmax(1), average="macro"))
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, proba), rel=1e-9)


def test_regression_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.normal(3, 2, 2000)
    yhat = y + rng.normal(0, 0.5, len(y))
    m = compute_metrics("regression", y, yhat)
    assert m["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y, yhat)))
    assert m["mae"] == pytest.approx(skm.mean_absolute_error(y, yhat))
    assert m["r2"] == pytest.approx(skm.r2_score(y, yhat))


def test_auc_with_one_class_is_nan():
    assert np.isnan(compute_metrics("binary", np.ones(10), np.linspace(0, 1, 10))["roc_auc"])


def test_primary_metric_defaults_and_checks():
    assert primary_metric_for("binary", None) == "roc_auc"
    assert primary_metric_for("regression", None) == "rmse"
    assert primary_metric_for("multiclass", "macro_f1") == "macro_f1"
    with pytest.raises(ConfigError, match="primary_metric"):
        primary_metric_for("regression", "roc_auc")


def test_improvement_and_floor_are_oriented():
    assert improvement("roc_auc", 0.8, 0.7) == pytest.approx(0.1)
    assert improvement("rmse", 0.8, 1.0) == pytest.approx(0.2)  # lower error is better
    assert clears_floor("roc_auc", 0.7, 0.6) and not clears_floor("roc_auc", 0.5, 0.6)
    assert clears_floor("rmse", 0.5, 0.6) and not clears_floor("rmse", 0.7, 0.6)
    assert clears_floor("rmse", 10.0, None)
    assert not clears_floor("roc_auc", float("nan"), 0.5)


@pytest.mark.parametrize("n", [BLB_SUBSET_ROWS, 3 * BLB_SUBSET_ROWS])
def test_bootstrap_interval_separates_a_better_model_and_covers_zero_for_a_tie(n):
    y, good = _binary(n=n, seed=5, signal=2.0)
    _, weak = _binary(n=n, seed=5, signal=2.0)
    rng = np.random.default_rng(9)
    weak = np.clip(good + rng.normal(0, 0.3, n), 0, 1)  # the same model plus noise: worse
    ci = bootstrap_difference("roc_auc", "binary", y, good, weak, samples=200, seed=0)
    assert ci["low"] > 0 and ci["low"] <= ci["estimate"] <= ci["high"]
    assert ci["method"] == ("bootstrap" if n <= BLB_SUBSET_ROWS else "bag-of-little-bootstraps")
    tie = bootstrap_difference("roc_auc", "binary", y, good, good.copy(), samples=200, seed=0)
    assert tie["estimate"] == 0 and tie["low"] == 0 and tie["high"] == 0
    # error metrics: the improvement bounds flip sign and order
    lo, hi = improvement_bounds({**ci, "higher_is_better": False})
    assert lo == -ci["high"] and hi == -ci["low"]


@pytest.mark.parametrize("n", [20_000, 100_000])
def test_bootstrap_width_matches_the_analytic_standard_error_of_a_mean_difference(n):
    # accuracy difference of two models is a mean of per-row differences: its SE is known in closed form
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, n).astype(float)
    a = np.where(rng.random(n) < 0.8, y, 1 - y)
    b = np.where(rng.random(n) < 0.78, y, 1 - y)
    d = (a == y).astype(float) - (b == y).astype(float)
    se = d.std(ddof=1) / np.sqrt(n)
    ci = bootstrap_difference("accuracy", "binary", y, a, b, samples=400, seed=1)
    assert ci["method"] == "bag-of-little-bootstraps"
    assert ci["std_error"] == pytest.approx(se, rel=0.2)
    assert (ci["high"] - ci["low"]) == pytest.approx(2 * 1.96 * se, rel=0.2)


@pytest.mark.parametrize("lam", [0.7, 10.008, 63.1])
def test_the_poisson_sampler_draws_the_poisson_distribution(lam):
    # the bootstrap's replicate weights (BLB: Poisson(n/b) per row); every value's frequency within 5 sigma
    from scipy import stats

    n = 400_000
    draws = PoissonSampler(lam).draw(np.random.default_rng(3), (4, n // 4))
    assert draws.shape == (4, n // 4) and draws.min() >= 0
    freq = np.bincount(draws.ravel()) / n
    pmf = stats.poisson.pmf(np.arange(len(freq)), lam)
    sigma = np.sqrt(pmf * (1 - pmf) / n)
    assert np.all(np.abs(freq - pmf) <= 5 * sigma + 1e-6)
    assert draws.mean() == pytest.approx(lam, abs=5 * np.sqrt(lam / n))
    assert draws.var() == pytest.approx(lam, rel=0.02)


def test_bootstrap_is_reproducible_with_a_seed():
    y, p = _binary(n=1000, seed=1)
    q = np.clip(p + 0.05, 0, 1)
    a = bootstrap_difference("log_loss", "binary", y, p, q, samples=50, seed=7)
    b = bootstrap_difference("log_loss", "binary", y, p, q, samples=50, seed=7)
    assert a == b
