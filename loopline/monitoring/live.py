"""Live performance: the served predictions (predictions/M) joined with the labels that came back
(feedback/M), per model version and over time windows.

The join key is (`_request_id`, `_row_index`): the X-Request-Id the server answered with and the row's place
in that request (loopline.serving.feedback). Rows logged before the inference log kept `_row_index` cannot
be joined and are left out. A request id a client reused, or a retried request, may be logged more than
once for one version: the latest scoring counts, so a label is counted once per version. A shadow scoring is
a prediction of its version like any other: the same label scores the champion and the shadow alike, which
is what a canary in shadow mode compares.

The metric is `loopline.monitoring.performance.compute_metric` on labelled rows, so the live number is the
one performance drift compares with the evaluation metric. It is computed from the lake on a schedule (the
drift flow, `loopline feedback`), never per request, and published as Prometheus gauges
(`live_metrics_text`): `loopline_live_metric{model,version,metric,window}` and
`loopline_live_labelled_rows{model,version,window}`, window `all` or `<H>h` (the last H hours of scoring).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from loopline.data.contracts import Contract
from loopline.monitoring.performance import DEFAULT_METRIC, METRICS, compute_metric
from loopline.storage.lake import Lake

KEY = ["_request_id", "_row_index"]
PREDICTION = "_prediction"


def labelled_predictions(
    lake: Lake,
    model: str,
    *,
    since: datetime | None = None,
    versions: list[str] | None = None,
) -> pd.DataFrame:
    """One row per (request id, row, version) with a label: `_request_id`, `_row_index`, `_model_version`,
    `_role`, `_scored_at`, `_prediction`, `label`. Empty when either table is missing or nothing joins."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from loopline.storage import delta

    columns = [*KEY, "_model_version", "_role", "_scored_at", PREDICTION, "label"]
    empty = pd.DataFrame(columns=columns)
    feedback = delta.open_table(lake, lake.uri("feedback", model))
    predictions = delta.open_table(lake, lake.table_uri("predictions", model))
    if feedback is None or predictions is None:
        return empty
    labels = delta.dataset(feedback).to_table(columns=[*KEY, "label"])
    if labels.num_rows == 0:
        return empty
    scored = delta.dataset(predictions)
    if "_row_index" not in scored.schema.names:  # a log from before the key existed
        return empty
    expr = pc.field("_row_index").is_valid() & pc.field("_request_id").isin(
        pc.unique(labels.column("_request_id"))
    )
    if since is not None:
        expr &= pc.field("_scored_at") >= pa.scalar(since, type=pa.timestamp("us", tz="UTC"))
    if versions is not None:
        expr &= pc.field("_model_version").isin(pa.array([str(v) for v in versions]))
    rows = scored.to_table(columns=[c for c in columns if c != "label"], filter=expr)
    if rows.num_rows == 0:
        return empty
    joined = rows.join(labels, keys=KEY, join_type="inner").to_pandas()
    joined = joined.sort_values("_scored_at").drop_duplicates([*KEY, "_model_version"], keep="last")
    return joined[columns].reset_index(drop=True)


def label_values(labels: pd.Series, contract: Contract) -> np.ndarray:
    """Labels as the metric takes them: binary/multiclass as the class index (category labels by their
    place in the contract's values), regression as floats."""
    spec = contract.columns[contract.label]
    if contract.task != "regression" and spec.values is not None and labels.dtype == object:
        index = {v: i for i, v in enumerate(spec.values)}
        return np.array([index.get(v, -1) for v in labels], dtype=np.float64)
    return labels.to_numpy(dtype=np.float64)


def prediction_values(predictions: pd.Series, contract: Contract) -> np.ndarray:
    """Logged predictions as the metric takes them (multiclass logs the class itself: its index)."""
    spec = contract.columns[contract.label]
    if contract.task == "multiclass":
        if spec.values is not None:
            index = {v: i for i, v in enumerate(spec.values)}
            codes = np.array([index.get(v, -1) for v in predictions], dtype=np.int64)
        else:
            codes = predictions.to_numpy(dtype=np.int64)
        width = max(int(codes.max()) + 1, len(spec.values or ())) if len(codes) else 1
        onehot = np.zeros((len(codes), width))  # the class as probability 1: accuracy; log loss is moot
        onehot[np.arange(len(codes)), np.clip(codes, 0, None)] = 1.0
        return onehot
    return predictions.to_numpy(dtype=np.float64)


def live_performance(
    lake: Lake,
    model: str,
    contract: Contract,
    *,
    metric: str | None = None,
    windows_hours: list[float] = (1.0, 24.0, 168.0),
    min_rows: int = 1,
    now: datetime | None = None,
    versions: list[str] | None = None,
) -> dict[str, Any]:
    """The live metric per version, over all labelled rows and over each window: {"metric", "task",
    "versions": {version: {window: {"value", "rows"}}}, "hourly": {version: [{"hour", "value", "rows"}]}}.
    A window with fewer than `min_rows` labelled rows (or one class, for ROC AUC) has value None."""
    task = contract.task
    metric = metric or DEFAULT_METRIC[task]
    if task == "multiclass" and metric != "accuracy":
        metric = "accuracy"  # the log keeps the predicted class, not the probabilities
    if metric not in METRICS[task]:
        from loopline.errors import DriftError

        raise DriftError(f"metric {metric!r} does not apply to a {task} task (use one of {METRICS[task]})")
    now = now or datetime.now(UTC)
    frame = labelled_predictions(lake, model, versions=versions)
    out: dict[str, Any] = {"model": model, "metric": metric, "task": task, "versions": {}, "hourly": {}}
    if frame.empty:
        out["labelled_rows"] = 0
        return out
    y = label_values(frame["label"], contract)
    p = prediction_values(frame[PREDICTION], contract)
    stamps = pd.to_datetime(frame["_scored_at"], utc=True)
    for version in sorted(frame["_model_version"].unique(), key=_version_key):
        mine = (frame["_model_version"] == version).to_numpy()
        windows = {"all": _value(metric, task, y[mine], p[mine], min_rows)}
        for hours in windows_hours:
            inside = mine & (stamps >= now - timedelta(hours=hours)).to_numpy()
            windows[f"{hours:g}h"] = _value(metric, task, y[inside], p[inside], min_rows)
        out["versions"][str(version)] = windows
        hours_of = stamps[mine].dt.floor("h")
        series = []
        for hour in sorted(hours_of.unique()):
            inside = mine.copy()
            inside[mine] = (hours_of == hour).to_numpy()
            series.append({"hour": hour.isoformat(), **_value(metric, task, y[inside], p[inside], min_rows)})
        out["hourly"][str(version)] = series
    out["labelled_rows"] = int(len(frame))
    return out


def _value(metric: str, task: str, y: np.ndarray, p: np.ndarray, min_rows: int) -> dict[str, Any]:
    rows = int(len(y))
    value = compute_metric(metric, task, y, p) if rows >= max(min_rows, 1) else None
    return {"value": value, "rows": rows}


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if str(version).isdigit() else (1 << 62, str(version))


def live_metrics_text(result: dict[str, Any]) -> str:
    """Prometheus text of a `live_performance` result (see the module docstring)."""
    from loopline.monitoring.publish import Families

    fam = Families()
    model, metric = result["model"], result["metric"]
    for version, windows in result["versions"].items():
        for window, point in windows.items():
            fam.gauge(
                "loopline_live_labelled_rows",
                "served rows with a label (predictions/M joined with feedback/M by request id and row)",
                point["rows"],
                model=model,
                version=version,
                window=window,
            )
            if point["value"] is not None:
                fam.gauge(
                    "loopline_live_metric",
                    "the primary metric on live traffic with labels, per version and window",
                    point["value"],
                    model=model,
                    version=version,
                    metric=metric,
                    window=window,
                )
    return fam.text()
