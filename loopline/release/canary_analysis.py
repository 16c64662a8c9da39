"""Canary analysis: challenger against champion on the live traffic of one rollout step. No Prefect here.

Inputs, all measured, none assumed:
- the servers' `/metrics` (loopline/serving/metrics.py), summed over every replica: per (version, role)
  answered requests, model failures, and the latency histogram. Counters are cumulative, so a window is the
  difference of two scrapes (a replica that restarted in between counts from zero: its negative difference is
  clamped, a lost window rather than a wrong one);
- `predictions/M` (the inference log): the prediction distributions of both, compared with a drift method of
  loopline.monitoring.methods, as drift monitoring compares a window with its reference.

- when labels have arrived (feedback/M, joined by loopline.monitoring.live): the primary metric of each
  side on its labelled rows, and the bootstrap interval of challenger - champion the offline gate uses
  (loopline.release.metrics: Poisson(1) row weights, percentile interval, evaluation.bootstrap_samples and
  seed). Rows both scored (shadow mode) are paired, exactly as the gate pairs them; a canary splits
  requests, so no row has both answers and each side is resampled on its own. A challenger whose whole
  interval of improvement is below zero (significantly worse) fails the check.

The champion's side is everything since the rollout started (at 100% it gets no new traffic); the
challenger's is the current step. Latency quantiles interpolate inside histogram buckets as Prometheus'
histogram_quantile does, so the latency check allows `latency_slack_ms` besides the ratio.
"""

from __future__ import annotations

import math
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from loopline.config import RolloutConfig
from loopline.release.gate import check

REQUESTS = "loopline_serving_version_requests_total"
ERRORS = "loopline_serving_version_errors_total"
LATENCY = "loopline_serving_request_latency_seconds"
SCRAPE_TIMEOUT_SECONDS = 5.0


@dataclass
class Counts:
    requests: float = 0.0
    errors: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)  # upper bound -> cumulative count

    def minus(self, other: Counts) -> Counts:
        return Counts(
            max(0.0, self.requests - other.requests),
            max(0.0, self.errors - other.errors),
            {le: max(0.0, n - other.buckets.get(le, 0.0)) for le, n in self.buckets.items()},
        )

    def plus(self, other: Counts) -> Counts:
        keys = set(self.buckets) | set(other.buckets)
        merged = {le: self.buckets.get(le, 0.0) + other.buckets.get(le, 0.0) for le in keys}
        return Counts(self.requests + other.requests, self.errors + other.errors, merged)


Snapshot = dict[tuple[str, str], Counts]  # (version, role) -> counts


def scrape(urls: list[str]) -> Snapshot:
    """Every replica's counters summed. A replica that does not answer raises: a verdict on part of the
    fleet would be a guess."""
    from prometheus_client.parser import text_string_to_metric_families

    total: Snapshot = {}
    for url in urls:
        with urllib.request.urlopen(f"{url.rstrip('/')}/metrics", timeout=SCRAPE_TIMEOUT_SECONDS) as resp:
            text = resp.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                key = (sample.labels.get("version"), sample.labels.get("role"))
                if key[0] is None or key[1] is None:
                    continue
                counts = total.setdefault(key, Counts())
                if sample.name == REQUESTS:
                    counts.requests += sample.value
                elif sample.name == ERRORS:
                    counts.errors += sample.value
                elif sample.name == f"{LATENCY}_bucket":
                    le = float(sample.labels["le"])
                    counts.buckets[le] = counts.buckets.get(le, 0.0) + sample.value
    return total


def side(now: Snapshot, before: Snapshot, version: str, roles: tuple[str, ...]) -> Counts:
    """One model's counts between two scrapes, over the roles it served in."""
    out = Counts()
    for role in roles:
        out = out.plus(now.get((version, role), Counts()).minus(before.get((version, role), Counts())))
    return out


def quantile(buckets: dict[float, float], q: float) -> float | None:
    """Prometheus' histogram_quantile: linear inside the bucket holding the q-th observation (seconds)."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank:
            if math.isinf(le):
                return lower  # beyond the last finite bound: its bound is the best estimate
            return lower + (le - lower) * ((rank - below) / max(count - below, 1e-12))
        lower, below = le, count
    return lower


def error_rate(c: Counts) -> float | None:
    n = c.requests + c.errors
    return c.errors / n if n else None


def summary(c: Counts) -> dict[str, Any]:
    p50, p99 = quantile(c.buckets, 0.5), quantile(c.buckets, 0.99)
    return {
        "requests": int(c.requests),
        "errors": int(c.errors),
        "error_rate": error_rate(c),
        "p50_ms": None if p50 is None else round(p50 * 1000, 3),
        "p99_ms": None if p99 is None else round(p99 * 1000, 3),
    }


def prediction_shift(champion: np.ndarray, challenger: np.ndarray, method: str, bins: int = 10) -> float:
    """How far the challenger's prediction distribution is from the champion's (the champion is the
    reference, binned at its quantiles as drift monitoring bins a reference)."""
    from scipy import stats

    from loopline.monitoring.methods import jensen_shannon, psi

    ref, cur = np.asarray(champion, dtype=float), np.asarray(challenger, dtype=float)
    if method == "ks":
        return float(stats.ks_2samp(ref, cur).pvalue)
    if method == "wasserstein":
        return float(stats.wasserstein_distance(ref, cur) / max(float(np.std(ref)), 0.001))
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1))[1:-1])
    ref_counts = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=len(edges) + 1)
    cur_counts = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=len(edges) + 1)
    return psi(ref_counts, cur_counts) if method == "psi" else jensen_shannon(ref_counts, cur_counts)


def read_predictions(lake, model: str, version: str, roles: tuple[str, ...], since: datetime) -> np.ndarray:
    """The `_prediction` values `version` logged in `roles` since `since` (an aware UTC time), from
    predictions/M."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from loopline.storage.delta import dataset, open_table

    table = open_table(lake, lake.table_uri("predictions", model))
    if table is None:
        return np.array([])
    ds = dataset(table)
    scored_type = ds.schema.field("_scored_at").type
    where = (
        (pc.field("_model_version") == version)
        & pc.field("_role").isin(list(roles))
        & (pc.field("_scored_at") >= pa.scalar(since, type=scored_type))
    )
    values = ds.to_table(columns=["_prediction"], filter=where).column("_prediction")
    try:
        return np.asarray(values.to_numpy(zero_copy_only=False), dtype=float)
    except (TypeError, ValueError):  # multi-output predictions: compare the first output
        return np.asarray([v[0] for v in values.to_pylist()], dtype=float)


def analyse(
    rcfg: RolloutConfig,
    *,
    champion: Counts,
    challenger: Counts,
    champion_predictions: np.ndarray | None = None,
    challenger_predictions: np.ndarray | None = None,
    live_metric: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Every check of one step (`live_metric`: the labels check, `live_metric_check`): passed True/False, or None when there is not enough data for it."""
    a, b = summary(champion), summary(challenger)
    checks = []
    if a["error_rate"] is None or b["error_rate"] is None:
        checks.append(check("error rate", None, "no requests on one side yet"))
    else:
        ok = b["error_rate"] <= a["error_rate"] + rcfg.max_error_rate_increase
        checks.append(
            check(
                "error rate",
                ok,
                f"challenger {b['error_rate']:.4f} ({b['errors']}/{b['requests'] + b['errors']}) vs champion "
                f"{a['error_rate']:.4f}, allowed increase {rcfg.max_error_rate_increase}",
            )
        )
    for q in ("p50_ms", "p99_ms"):
        if a[q] is None or b[q] is None:
            checks.append(check(f"{q[:3]} latency", None, "no answered requests on one side yet"))
            continue
        bar = max(a[q] * rcfg.max_latency_ratio, a[q] + rcfg.latency_slack_ms)
        checks.append(
            check(
                f"{q[:3]} latency",
                b[q] <= bar,
                f"challenger {b[q]:.2f} ms vs champion {a[q]:.2f} ms, allowed {bar:.2f} ms "
                f"(x{rcfg.max_latency_ratio} or +{rcfg.latency_slack_ms} ms)",
            )
        )
    checks.append(_shift_check(rcfg, champion_predictions, challenger_predictions))
    if live_metric is not None:
        checks.append(live_metric)
    return {"champion": a, "challenger": b, "checks": checks}


def fleet(urls: list[str]) -> list[dict[str, Any]]:
    """Each replica's /version: which champion and challenger (and weight) it serves right now."""
    import json

    out = []
    for url in urls:
        with urllib.request.urlopen(f"{url.rstrip('/')}/version", timeout=SCRAPE_TIMEOUT_SECONDS) as resp:
            info = json.loads(resp.read())
        challenger = info.get("challenger") or {}
        out.append(
            {
                "url": url,
                "champion": str(info.get("version")),
                "challenger": None if not challenger else str(challenger.get("version")),
                "weight": info.get("challenger_weight"),
            }
        )
    return out


# Fewer logged predictions on a side and the shift is noise: 10 quantile bins need about 20 rows each. Two
# samples of one distribution at 50 rows scored PSI >= 0.25 (the default bar) 35% of the time, at 100 rows 5%,
# at 200 rows none of 500 draws.
MIN_SHIFT_ROWS = 200


def _shift_check(rcfg: RolloutConfig, ref: np.ndarray | None, cur: np.ndarray | None) -> dict[str, Any]:
    method, bar = rcfg.prediction_shift_method, rcfg.prediction_shift_threshold
    if bar is None:
        return check("prediction shift", None, "not set")
    if ref is None or cur is None or min(len(ref), len(cur)) < MIN_SHIFT_ROWS:
        n = (0 if ref is None else len(ref), 0 if cur is None else len(cur))
        return check("prediction shift", None, f"{n[0]} / {n[1]} logged predictions, {MIN_SHIFT_ROWS} needed")
    score = prediction_shift(ref, cur, method)
    ok = score >= bar if method == "ks" else score < bar
    rule = f"p-value >= {bar}" if method == "ks" else f"< {bar}"
    return check(
        "prediction shift",
        ok,
        f"{method} {score:.4f} between champion ({len(ref)} rows) and challenger ({len(cur)} rows), {rule}",
    )


MIN_LABEL_ROWS = 50  # fewer labelled rows on a side: the live metric is noise


def read_labelled(
    lake, model: str, champion: str, challenger: str, roles: tuple[str, ...], since, step_since
):
    """The labelled rows (loopline.monitoring.live.labelled_predictions) of each side: the champion's since
    the rollout started, the challenger's (in `roles`) since the step started."""
    import pandas as pd

    from loopline.monitoring.live import labelled_predictions

    rows = labelled_predictions(lake, model, since=since, versions=[champion, challenger])
    if rows.empty:
        return rows, rows
    version, role = rows["_model_version"], rows["_role"]
    stamp = pd.to_datetime(rows["_scored_at"], utc=True)
    mine = (version == challenger) & role.isin(list(roles)) & (stamp >= pd.Timestamp(step_since))
    return rows[(version == champion) & (role == "champion")], rows[mine]


def live_metric_check(
    metric: str, contract, champion_rows, challenger_rows, *, samples: int, seed: int
) -> dict[str, Any]:
    """The primary metric on labelled live rows, challenger against champion, with the gate's bootstrap
    interval of the difference; fails when the challenger is significantly worse (interval below zero)."""
    from loopline.monitoring.live import KEY, label_values, prediction_values
    from loopline.release.metrics import (
        BLB_SUBSET_ROWS,
        bootstrap_difference,
        improvement_bounds,
        prepare_metric,
    )

    name, task = f"live {metric}", contract.task
    n_a, n_b = len(champion_rows), len(challenger_rows)
    if min(n_a, n_b) < MIN_LABEL_ROWS:
        return check(name, None, f"{n_a} / {n_b} labelled rows, {MIN_LABEL_ROWS} needed on each side")
    paired = champion_rows.merge(challenger_rows, on=KEY, suffixes=("_a", "_b"))
    if len(paired) >= MIN_LABEL_ROWS:  # shadow: both answered the same rows, paired as the gate pairs
        y = label_values(paired["label_a"], contract)
        p_a, p_b = (prediction_values(paired[f"_prediction_{s}"], contract) for s in "ab")
        ci = bootstrap_difference(metric, task, y, p_b, p_a, samples=samples, seed=seed)
        value_a, value_b = (prepare_metric(metric, task, y, p)(None) for p in (p_a, p_b))
    else:  # the newest BLB_SUBSET_ROWS of each side: the cost of a replicate stays bounded
        sides = [
            (label_values(r["label"], contract), prediction_values(r["_prediction"], contract))
            for r in (champion_rows.tail(BLB_SUBSET_ROWS), challenger_rows.tail(BLB_SUBSET_ROWS))
        ]
        ci, value_a, value_b = _unpaired_bootstrap(metric, task, *sides, samples=samples, seed=seed)
    low, high = improvement_bounds(ci)
    if not (np.isfinite(low) and np.isfinite(high)):
        return check(name, None, f"no interval on {n_a} / {n_b} labelled rows (one class on a side?)")
    detail = (
        f"challenger {value_b:.4f} ({n_b} labelled rows) vs champion {value_a:.4f} ({n_a}): "
        f"{int(ci['level'] * 100)}% CI of the improvement [{low:.4f}, {high:.4f}] ({ci['method']}), "
        "significantly worse (the whole interval below 0) aborts"
    )
    return check(name, high >= 0, detail)


def _unpaired_bootstrap(metric, task, champion, challenger, *, samples: int, seed: int, level=0.95):
    """metric(challenger) - metric(champion) on disjoint rows: the gate's Poisson(1) bootstrap and percentile
    interval (loopline.release.metrics), each side's rows resampled on their own."""
    from loopline.release.metrics import _interval, prepare_metric

    (y_a, p_a), (y_b, p_b) = champion, challenger
    f_a, f_b = prepare_metric(metric, task, y_a, p_a), prepare_metric(metric, task, y_b, p_b)
    value_a, value_b = f_a(None), f_b(None)
    rng = np.random.default_rng(seed)
    reps = np.empty(samples)
    for r in range(samples):
        w_a, w_b = (
            rng.poisson(1.0, len(y_a)).astype(np.float64),
            rng.poisson(1.0, len(y_b)).astype(np.float64),
        )
        reps[r] = f_b(w_b) - f_a(w_a) - (value_b - value_a)
    n = len(y_a) + len(y_b)
    ci = _interval(
        metric, value_b - value_a, [reps[np.isfinite(reps)]], level, samples, "unpaired bootstrap", n, n
    )
    return ci, value_a, value_b
