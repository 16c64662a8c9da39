"""The drift verdict log: one row per drift check in the Delta table drift/M of the lake.

`loopline status --model M` reads the last row (last drift verdict); the history shows how a model's
inputs moved over time. No prefect here: the status command and the serving process may read it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from loopline.storage import delta
from loopline.storage.lake import Lake

SCHEMA = pa.schema(
    [
        ("checked_at", pa.timestamp("us", tz="UTC")),
        ("model_version", pa.string()),
        ("drift_detected", pa.bool_()),
        ("drift_share", pa.float64()),
        ("prediction_drift", pa.bool_()),
        ("n_current", pa.int64()),
        ("drifted_features", pa.string()),  # JSON list
        ("window", pa.string()),  # JSON object
        ("event_emitted", pa.bool_()),
    ]
)


def verdicts_uri(lake: Lake, model: str) -> str:
    return lake.uri("drift", model)


def record_drift_verdict(
    lake: Lake,
    model: str,
    version: str,
    report: dict[str, Any],
    window: dict[str, Any],
    event_emitted: bool,
    checked_at: datetime | None = None,
) -> None:
    """Append one check (`report` as `DriftReport.to_dict()`)."""
    from deltalake import write_deltalake

    row = {
        "checked_at": [checked_at or datetime.now(UTC)],
        "model_version": [str(version)],
        "drift_detected": [bool(report["drift_detected"])],
        "drift_share": [float(report["drift_share"])],
        "prediction_drift": [bool(report["prediction_drift"])],
        "n_current": [int(report["n_current"])],
        "drifted_features": [json.dumps(list(report.get("drifted_features") or []))],
        "window": [json.dumps(window, default=str)],
        "event_emitted": [bool(event_emitted)],
    }
    write_deltalake(
        verdicts_uri(lake, model),
        pa.table(row, schema=SCHEMA),
        mode="append",
        storage_options=lake.storage_options,
    )


def last_drift_verdict(lake: Lake, model: str) -> dict[str, Any] | None:
    """The latest check of `model`, or None before the first one."""
    rows = delta.read_column(lake, verdicts_uri(lake, model), SCHEMA.names)
    if rows is None or rows.num_rows == 0:
        return None
    last = max(rows.to_pylist(), key=lambda r: r["checked_at"])
    return {
        **last,
        "checked_at": last["checked_at"].isoformat(),
        "drifted_features": json.loads(last["drifted_features"]),
        "window": json.loads(last["window"]),
    }
