"""Drift core: every method against scipy on known distributions, defaults, correction, verdict, profiles."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families
from scipy import stats
from scipy.spatial import distance

from loopline.config import DriftConfig
from loopline.errors import ConfigError, DriftError
from loopline.monitoring import (
    DriftAccumulator,
    DriftReport,
    ProfileBuilder,
    build_reference_profile,
    detect_drift,
    drift_metrics_text,
    load_profile,
    performance_drift,
    profile_from_json,
    profile_to_json,
    render_drift_markdown,
    save_profile,
)
from loopline.monitoring.methods import adjust_pvalues, psi

RNG_SEED = 20261123


def rng(offset: int = 0) -> np.random.Generator:
    return np.random.default_rng(RNG_SEED + offset)


def one_column(ref: np.ndarray, cur: np.ndarray, cfg: DriftConfig | None = None, **profile_kw) -> dict:
    profile = build_reference_profile(pd.DataFrame({"x": ref}), ["x"], [], **profile_kw)
    return detect_drift(profile, pd.DataFrame({"x": cur}), cfg or DriftConfig()).features["x"]


DISTRIBUTIONS = {
    "normal": lambda g, n, s: g.normal(s, 1.0, n),
    "lognormal": lambda g, n, s: g.lognormal(s, 0.7, n),
    "offset_exponential": lambda g, n, s: 2000 + s * 5 + g.exponential(5, n),
    "integers": lambda g, n, s: g.poisson(20 + 20 * s, n).astype(float),
}


# -- Wasserstein ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
@pytest.mark.parametrize("shift", [0.0, 0.05, 0.5])
def test_binned_wasserstein_matches_scipy(name, shift):
    make = DISTRIBUTIONS[name]
    ref, cur = make(rng(1), 20_000, 0.0), make(rng(2), 15_000, shift)
    result = one_column(ref, cur)
    assert result["method"] == "wasserstein"  # > 1000 reference rows: Evidently's default
    exact = stats.wasserstein_distance(ref, cur) / np.std(ref)
    assert result["score"] == pytest.approx(exact, abs=2e-3, rel=1e-2)


def test_wasserstein_verdicts_on_same_and_shifted_distributions():
    ref = rng(1).normal(0, 2, 20_000)
    assert not one_column(ref, rng(2).normal(0, 2, 20_000))["drift"]
    shifted = one_column(ref, rng(3).normal(0.5, 2, 20_000))  # 0.25 std
    assert shifted["drift"] and shifted["score"] == pytest.approx(0.25, abs=0.03)


def test_wasserstein_when_current_lies_outside_the_reference_range():
    # outside [min, max] of the reference the integral is exact; inside, only the one bin where the
    # CDFs cross (F_ref passes 0.4) is approximate
    ref = rng(1).uniform(0, 1, 5_000)
    cur = np.concatenate([rng(2).uniform(-3, -2, 2_000), rng(3).uniform(4, 9, 3_000)])
    result = one_column(ref, cur)
    assert result["score"] == pytest.approx(stats.wasserstein_distance(ref, cur) / np.std(ref), rel=1e-5)


def test_wasserstein_small_reference_is_exact():
    ref, cur = rng(1).normal(0, 1, 400), rng(2).normal(0.3, 1, 700)
    result = one_column(ref, cur, DriftConfig(methods={"x": "wasserstein"}))
    assert result["score"] == pytest.approx(stats.wasserstein_distance(ref, cur) / np.std(ref), rel=1e-12)


def test_constant_reference_norm_is_floored_like_evidently():
    result = one_column(np.full(2000, 3.0), np.full(2000, 3.5), DriftConfig(methods={"x": "wasserstein"}))
    assert result["score"] == pytest.approx(0.5 / 0.001)


# -- KS ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shift", [0.0, 0.4])
def test_ks_small_reference_equals_scipy_exact(shift):
    ref, cur = rng(1).normal(0, 1, 300), rng(2).normal(shift, 1, 2_000)
    result = one_column(ref, cur)
    assert result["method"] == "ks"  # <= 1000 reference rows: Evidently's default
    expected = stats.ks_2samp(ref, cur)
    assert result["score"] == pytest.approx(expected.pvalue, rel=1e-12)
    assert result["drift"] == (expected.pvalue < 0.05) == (shift > 0)


@pytest.mark.parametrize("data", ["continuous", "ties"])
def test_ks_small_reference_large_window_statistic_is_exact(data):
    g = rng(4)
    if data == "continuous":
        ref, cur = g.normal(0, 1, 800), g.normal(0.05, 1, 30_000)
    else:
        ref, cur = g.integers(0, 12, 800).astype(float), g.integers(0, 13, 30_000).astype(float)
    result = one_column(ref, cur, DriftConfig(methods={"x": "ks"}))
    expected = stats.ks_2samp(ref, cur)  # asymptotic above 10,000 rows, as ours
    assert result["statistic"] == pytest.approx(expected.statistic, abs=1e-12)
    assert result["score"] == pytest.approx(expected.pvalue, rel=1e-9)


def test_ks_large_reference_statistic_within_one_bin():
    ref, cur = rng(1).lognormal(0, 1, 50_000), rng(2).lognormal(0.1, 1, 40_000)
    result = one_column(ref, cur, DriftConfig(methods={"x": "ks"}), cdf_bins=256)
    assert result["statistic"] == pytest.approx(stats.ks_2samp(ref, cur).statistic, abs=1 / 256)
    assert result["drift"]


# -- categorical methods -------------------------------------------------------------------------------------


def categorical_frames(n_ref: int, n_cur: int, p_ref, p_cur, seed: int = 0):
    cats = np.array(["a", "b", "c", "d"][: len(p_ref)], dtype=object)
    ref = pd.DataFrame({"c": cats[rng(seed).choice(len(cats), n_ref, p=p_ref)]})
    cur = pd.DataFrame({"c": cats[rng(seed + 1).choice(len(cats), n_cur, p=p_cur)]})
    return ref, cur


def counts_of(frame: pd.DataFrame, keys: list[str]) -> np.ndarray:
    vc = frame["c"].value_counts()
    return np.array([vc.get(k, 0) for k in keys], dtype=float)


@pytest.mark.parametrize("p_cur", [[0.5, 0.3, 0.2], [0.3, 0.3, 0.4]])
def test_jensen_shannon_equals_scipy(p_cur):
    ref, cur = categorical_frames(5_000, 4_000, [0.5, 0.3, 0.2], p_cur)
    profile = build_reference_profile(ref, [], ["c"])
    result = detect_drift(profile, cur).features["c"]
    assert result["method"] == "jensenshannon"  # > 1000 reference rows
    keys = ["a", "b", "c"]
    expected = distance.jensenshannon(counts_of(ref, keys), counts_of(cur, keys))
    assert result["score"] == pytest.approx(expected, rel=1e-12)
    assert result["drift"] == (expected >= 0.1) == (p_cur[2] == 0.4)


@pytest.mark.parametrize("p_cur", [[0.5, 0.3, 0.2], [0.4, 0.3, 0.3]])
def test_chi_square_equals_scipy_contingency(p_cur):
    ref, cur = categorical_frames(600, 3_000, [0.5, 0.3, 0.2], p_cur, seed=10)
    profile = build_reference_profile(ref, [], ["c"])
    result = detect_drift(profile, cur).features["c"]
    assert result["method"] == "chisquare"  # <= 1000 reference rows
    keys = ["a", "b", "c"]
    stat, p, _, _ = stats.chi2_contingency(
        np.vstack([counts_of(ref, keys), counts_of(cur, keys)]), correction=False
    )
    assert result["score"] == pytest.approx(p, rel=1e-9)
    assert result["statistic"] == pytest.approx(stat, rel=1e-9)
    assert result["drift"] == (p < 0.05)


def test_chi_square_on_two_categories_is_evidentlys_z_test():
    ref, cur = categorical_frames(500, 800, [0.6, 0.4], [0.5, 0.5], seed=20)
    result = detect_drift(build_reference_profile(ref, [], ["c"]), cur).features["c"]
    # Evidently's proportions_diff_z_test
    p1, p2 = (ref["c"] == "a").mean(), (cur["c"] == "a").mean()
    pooled = (p1 * len(ref) + p2 * len(cur)) / (len(ref) + len(cur))
    z = (p1 - p2) / math.sqrt(pooled * (1 - pooled) * (1 / len(ref) + 1 / len(cur)))
    assert result["score"] == pytest.approx(2 * (1 - stats.norm.cdf(abs(z))), rel=1e-9)


def test_unseen_category_counts_as_drift():
    ref = pd.DataFrame({"c": ["a"] * 3000 + ["b"] * 2000})
    cur = pd.DataFrame({"c": ["a"] * 1500 + ["b"] * 1000 + ["new"] * 2500})
    result = detect_drift(build_reference_profile(ref, [], ["c"]), cur).features["c"]
    expected = distance.jensenshannon([3000, 2000, 0], [1500, 1000, 2500])
    assert result["score"] == pytest.approx(expected) and result["drift"]


def test_psi_numeric_on_reference_quantile_bins():
    ref, cur = rng(1).normal(0, 1, 10_000), rng(2).normal(0.5, 1, 8_000)
    result = one_column(ref, cur, DriftConfig(methods={"x": "psi"}))
    inner = np.unique(np.sort(ref)[np.round(np.linspace(0, len(ref) - 1, 21)).astype(int)[1:-1]])
    edges = np.concatenate(([-np.inf], inner, [np.inf]))
    # np.histogram's bins are right-open like ours, except its last bin (open here, so no value sits on it)
    p = np.histogram(ref, edges)[0] / len(ref)
    q = np.histogram(cur, edges)[0] / len(cur)
    assert result["score"] == pytest.approx(np.sum((p - q) * np.log(p / q)), rel=1e-9)
    assert result["drift"]  # 0.5 std shift: PSI ~ 0.25
    assert not one_column(ref, rng(3).normal(0, 1, 8_000), DriftConfig(methods={"x": "psi"}))["drift"]


def test_psi_fills_zeroes_like_evidently():
    # Evidently: empty bins get 1e-4 (or min/1e6 when the smallest share is below 1e-4)
    value = psi(np.array([50.0, 50.0, 0.0]), np.array([40.0, 40.0, 20.0]))
    p, q = np.array([0.5, 0.5, 1e-4]), np.array([0.4, 0.4, 0.2])
    assert value == pytest.approx(np.sum((p - q) * np.log(p / q)))


# -- defaults, low cardinality, configuration ----------------------------------------------------------------


def test_defaults_follow_evidently_by_reference_size():
    def methods_for(n_rows: int) -> dict[str, str]:
        g = rng(n_rows)
        frame = pd.DataFrame(
            {
                "num": g.normal(0, 1, n_rows),
                "binary_num": g.integers(0, 2, n_rows).astype(float),
                "three_num": g.integers(0, 3, n_rows).astype(float),
                "cat": g.choice(["x", "y", "z"], n_rows),
            }
        )
        profile = build_reference_profile(frame, ["num", "binary_num", "three_num"], ["cat"])
        return {k: v["method"] for k, v in detect_drift(profile, frame).features.items()}

    assert methods_for(1000) == {
        "num": "ks",
        "binary_num": "chisquare",
        "three_num": "chisquare",
        "cat": "chisquare",
    }
    assert methods_for(1001) == {
        "num": "wasserstein",
        "binary_num": "jensenshannon",
        "three_num": "jensenshannon",
        "cat": "jensenshannon",
    }


def test_low_cardinality_numeric_becomes_continuous_when_the_window_has_many_values():
    ref = rng(1).integers(0, 3, 5000).astype(float)
    assert one_column(ref, rng(2).integers(0, 3, 5000).astype(float))["method"] == "jensenshannon"
    assert one_column(ref, rng(3).normal(1, 1, 5000))["method"] == "wasserstein"


def test_methods_and_thresholds_are_configurable():
    ref, cur = rng(1).normal(0, 1, 5000), rng(2).normal(0.08, 1, 5000)
    assert not one_column(ref, cur)["drift"]  # W ~ 0.08 < 0.1
    result = one_column(ref, cur, DriftConfig(thresholds={"wasserstein": 0.05}))
    assert result["threshold"] == 0.05 and result["drift"]
    assert one_column(ref, cur, DriftConfig(methods={"x": "jensenshannon"}))["method"] == "jensenshannon"


def test_distance_method_on_categorical_is_a_config_error():
    ref, cur = categorical_frames(2000, 2000, [0.5, 0.5], [0.5, 0.5])
    with pytest.raises(ConfigError, match="'c' is categorical"):
        detect_drift(build_reference_profile(ref, [], ["c"]), cur, DriftConfig(methods={"c": "wasserstein"}))


# -- multiple testing and the verdict ------------------------------------------------------------------------


def test_multiple_testing_correction():
    p = np.array([0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205])
    np.testing.assert_allclose(adjust_pvalues(p, "bonferroni"), np.minimum(p * 8, 1))
    np.testing.assert_allclose(adjust_pvalues(p, "fdr_bh"), stats.false_discovery_control(p, method="bh"))
    np.testing.assert_allclose(adjust_pvalues(p, "none"), p)


def test_correction_changes_p_value_verdicts_only():
    g = rng(7)
    n = 400  # small reference: KS everywhere
    ref = pd.DataFrame({f"f{i}": g.normal(0, 1, n) for i in range(10)})
    cur = pd.DataFrame({f"f{i}": g.normal(0, 1, n) for i in range(10)})
    cur["f0"] = cur["f0"] + 0.3  # a weak shift: p = 0.01 here, not below 0.05 / 10
    profile = build_reference_profile(ref, list(ref), [])
    plain = detect_drift(profile, cur, DriftConfig())
    p0 = plain.features["f0"]["score"]
    assert plain.features["f0"]["drift"] and p0 * 10 >= 0.05
    bonf = detect_drift(profile, cur, DriftConfig(correction="bonferroni"))
    assert not bonf.features["f0"]["drift"]
    assert bonf.features["f0"]["p_adjusted"] == pytest.approx(min(1.0, p0 * 10))
    assert bonf.features["f0"]["score"] == p0  # the raw p stays the score


def test_share_threshold_decides_the_verdict():
    g = rng(8)
    ref = pd.DataFrame({f"f{i}": g.normal(0, 1, 4000) for i in range(4)})
    cur = pd.DataFrame({f"f{i}": g.normal(1.0 if i < 2 else 0.0, 1, 4000) for i in range(4)})
    profile = build_reference_profile(ref, list(ref), [])
    report = detect_drift(profile, cur, DriftConfig(share_threshold=0.5))
    assert report.drift_share == 0.5 and report.n_drifted == 2 and report.drift_detected
    assert sorted(report.drifted_features) == ["f0", "f1"]
    assert not detect_drift(profile, cur, DriftConfig(share_threshold=0.75)).drift_detected


def test_prediction_drift_alone_sets_the_verdict():
    g = rng(9)
    frame = pd.DataFrame({"a": g.normal(0, 1, 5000), "c": g.choice(["x", "y"], 5000)})
    scores = g.beta(2, 5, 5000)
    profile = build_reference_profile(frame, ["a"], ["c"], predictions=scores)
    assert profile["prediction"]["kind"] == "numeric"
    calm = detect_drift(profile, frame, predictions=g.beta(2, 5, 5000))
    assert not calm.drift_detected and not calm.prediction_drift
    moved = detect_drift(profile, frame, predictions=g.beta(5, 2, 5000))
    assert moved.drift_share == 0 and moved.prediction_drift and moved.drift_detected
    assert moved.prediction["method"] == "wasserstein"


def test_predictions_without_a_reference_profile_are_reported_not_scored():
    frame = pd.DataFrame({"a": rng(1).normal(0, 1, 2000)})
    report = detect_drift(build_reference_profile(frame, ["a"], []), frame, predictions=np.zeros(2000))
    assert report.prediction is None and not report.prediction_drift
    assert report.skipped == {"prediction": "the reference profile has no predictions"}


def test_class_probability_predictions_are_profiled_as_labels():
    g = rng(10)
    frame = pd.DataFrame({"a": g.normal(0, 1, 3000)})
    probs = g.dirichlet([5, 3, 1], 3000)
    profile = build_reference_profile(frame, ["a"], [], predictions=probs)
    assert profile["prediction"]["kind"] == "categorical"
    assert set(profile["prediction"]["frequencies"]) <= {"0", "1", "2"}
    flipped = detect_drift(profile, frame, predictions=probs[:, ::-1])
    assert flipped.prediction_drift and flipped.prediction["method"] == "jensenshannon"


def test_missing_values_are_dropped_and_empty_windows_skipped():
    g = rng(11)
    ref = pd.DataFrame({"a": g.normal(0, 1, 3000), "b": g.normal(0, 1, 3000)})
    cur = pd.DataFrame({"a": g.normal(0, 1, 3000), "b": np.nan})
    cur.loc[::3, "a"] = np.nan
    cur.loc[1, "a"] = np.inf
    report = detect_drift(build_reference_profile(ref, ["a", "b"], []), cur)
    assert report.features["a"]["n_current"] == 3000 - 1000 - 1
    assert report.skipped == {"b": "no current values"} and report.n_features == 1


def test_missing_or_non_numeric_current_column_is_a_typed_error():
    ref = pd.DataFrame({"a": rng(1).normal(0, 1, 2000)})
    profile = build_reference_profile(ref, ["a"], [])
    with pytest.raises(DriftError, match="no column 'a'") as err:
        detect_drift(profile, pd.DataFrame({"b": [1.0]}))
    assert err.value.column == "a"
    with pytest.raises(DriftError, match="not numeric"):
        detect_drift(profile, pd.DataFrame({"a": ["x", "y"]}))


# -- profiles: JSON, chunks ----------------------------------------------------------------------------------


def mixed_frame(n: int, seed: int) -> pd.DataFrame:
    g = rng(seed)
    frame = pd.DataFrame(
        {
            "num": g.normal(5, 2, n),
            "ints": g.integers(18, 90, n),
            "year": 2000 + g.integers(0, 25, n).astype(float),
            "cat": g.choice(["retail", "sme", "corp"], n).astype(object),
            "flag": g.choice([True, False], n),
        }
    )
    frame.loc[frame.index[::97], "num"] = np.nan
    frame.loc[frame.index[::89], "cat"] = None
    return frame


NUM, CAT = ["num", "ints", "year"], ["cat", "flag"]


def test_profile_json_round_trip(tmp_path):
    frame = mixed_frame(6000, 1)
    profile = build_reference_profile(frame, NUM, CAT, predictions=rng(2).random(6000))
    text = profile_to_json(profile)
    assert profile_from_json(text) == json.loads(text) == profile
    path = save_profile(profile, tmp_path / "profile.json")
    loaded = load_profile(path)
    current = mixed_frame(4000, 3)
    preds = rng(4).random(4000)
    assert detect_drift(loaded, current, predictions=preds) == detect_drift(
        profile, current, predictions=preds
    )
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    with pytest.raises(DriftError, match="not a loopline drift profile"):
        load_profile(tmp_path / "bad.json")
    with pytest.raises(DriftError, match="does not exist"):
        load_profile(tmp_path / "missing.json")


def test_profile_has_no_training_rows_beyond_small_references():
    profile = build_reference_profile(mixed_frame(6000, 1), NUM, CAT)
    entry = profile["numeric"]["num"]
    assert "raw" not in entry and len(entry["edges"]) <= profile["cdf_bins"] + 1
    assert entry["n"] + entry["n_missing"] == 6000
    small = build_reference_profile(mixed_frame(500, 1), NUM, CAT)
    assert len(small["numeric"]["num"]["raw"]) == small["numeric"]["num"]["n"]


@pytest.mark.parametrize("n_rows", [700, 9000])
def test_chunked_builder_equals_one_shot(tmp_path, n_rows):
    frame = mixed_frame(n_rows, 5)
    preds = rng(6).random(n_rows)
    one_shot = build_reference_profile(frame, NUM, CAT, predictions=preds)
    with ProfileBuilder(NUM, CAT, spill_dir=tmp_path) as builder:
        for start in range(0, n_rows, 2500):
            builder.update(frame.iloc[start : start + 2500], predictions=preds[start : start + 2500])
        chunked = builder.finish()
    assert chunked == one_shot
    assert list(tmp_path.iterdir()) == []  # spill files removed


def test_chunked_builder_rejects_predictions_on_some_chunks_only():
    frame = mixed_frame(100, 1)
    with ProfileBuilder(NUM, CAT) as builder:
        builder.update(frame, predictions=np.zeros(100))
        with pytest.raises(DriftError, match="every chunk or with none"):
            builder.update(frame)


def test_accumulated_window_equals_one_shot_window():
    profile = build_reference_profile(mixed_frame(8000, 7), NUM, CAT, predictions=rng(8).random(8000))
    current = mixed_frame(30_000, 9)
    preds = rng(10).random(30_000)
    whole = detect_drift(profile, current, predictions=preds)
    accumulator = DriftAccumulator(profile)
    for start in range(0, len(current), 7000):
        accumulator.update(current.iloc[start : start + 7000], predictions=preds[start : start + 7000])
    chunked = accumulator.finish()
    assert chunked.n_current == whole.n_current == 30_000
    for name, result in whole.features.items():
        assert chunked.features[name]["drift"] == result["drift"]
        assert chunked.features[name]["score"] == pytest.approx(result["score"], rel=1e-9, abs=1e-12)
    assert chunked.prediction["score"] == pytest.approx(whole.prediction["score"], rel=1e-9)


def test_report_to_dict_is_json_and_round_trips():
    profile = build_reference_profile(mixed_frame(3000, 1), NUM, CAT)
    report = detect_drift(profile, mixed_frame(3000, 2))
    data = json.loads(json.dumps(report.to_dict()))
    assert {
        "drift_detected",
        "drift_share",
        "prediction_drift",
        "features",
        "n_reference",
        "n_current",
    } <= set(data)
    assert set(data["features"]["num"]) >= {"method", "score", "threshold", "drift"}
    assert DriftReport.from_dict(data) == report


# -- performance drift ---------------------------------------------------------------------------------------


def test_performance_drift_binary_auc():
    from sklearn.metrics import roc_auc_score

    g = rng(12)
    y = g.integers(0, 2, 4000).astype(float)
    proba = np.clip(0.5 * y + g.normal(0.25, 0.25, 4000), 0, 1)
    auc = roc_auc_score(y, proba)
    ok = performance_drift(y, proba, reference_metric=auc + 0.01, task="binary", tolerance=0.02)
    assert ok["metric"] == "roc_auc" and ok["current"] == pytest.approx(auc) and not ok["degraded"]
    bad = performance_drift(y, proba, reference_metric=auc + 0.05, task="binary", tolerance=0.02)
    assert bad["degraded"] and bad["delta"] == pytest.approx(-0.05)
    y_partial = y.copy()
    y_partial[:1000] = np.nan  # labels arrive late: unlabelled rows are left out
    assert performance_drift(y_partial, proba, auc, "binary", 0.02)["n_labelled"] == 3000


def test_performance_drift_regression_lower_is_better_and_undefined_cases():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    pred = y + np.array([0.5, -0.5, 0.5, -0.5])
    res = performance_drift(y, pred, reference_metric=0.3, task="regression", tolerance=0.1)
    assert res["metric"] == "rmse" and res["current"] == pytest.approx(0.5) and res["degraded"]
    one_class = performance_drift(np.ones(10), np.full(10, 0.7), 0.8, "binary", 0.05)
    assert one_class["current"] is None and not one_class["degraded"] and "undefined" in one_class["note"]
    with pytest.raises(DriftError, match="does not apply"):
        performance_drift(y, pred, 0.3, "regression", 0.1, metric="roc_auc")


# -- outputs -------------------------------------------------------------------------------------------------


def shifted_report() -> DriftReport:
    g = rng(13)
    ref = pd.DataFrame(
        {"a": g.normal(0, 1, 3000), 'we"ird\\name': g.normal(0, 1, 3000), "c": g.choice(["x", "y"], 3000)}
    )
    cur = ref.copy()
    cur["a"] = cur["a"] + 1.0
    return detect_drift(build_reference_profile(ref, ["a", 'we"ird\\name'], ["c"]), cur)


def test_prometheus_text_parses_and_carries_the_report():
    report = shifted_report()
    text = drift_metrics_text(report, model="credit")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    share = families["loopline_drift_share"].samples[0]
    assert share.labels == {"model": "credit"} and share.value == pytest.approx(report.drift_share)
    assert families["loopline_drift_detected"].samples[0].value == float(report.drift_detected)
    scores = {s.labels["feature"]: s for s in families["loopline_feature_drift_score"].samples}
    assert set(scores) == {"a", 'we"ird\\name', "c"}
    assert scores["a"].value == pytest.approx(report.features["a"]["score"])
    assert scores["a"].labels["method"] == "wasserstein"


def test_markdown_lists_drifted_features_first():
    report = shifted_report()
    md = render_drift_markdown(report, model="credit")
    assert md.startswith("# Drift report: credit")
    rows = [line for line in md.splitlines() if line.startswith("| ") and "feature" not in line]
    assert rows[0].startswith("| a |") and "**yes**" in rows[0]
    assert len(rows) == 3
