"""Drift monitoring from stored reference profiles (pure numpy/scipy/pandas; no prefect, no mlflow).

- `build_reference_profile` / `ProfileBuilder`: the compact profile computed once at training time.
- `detect_drift` / `DriftAccumulator`: a current window against the profile -> `DriftReport`.
- `performance_drift`: the live metric against the evaluation metric once labels arrive.
- `drift_metrics_text`, `render_drift_markdown`: Prometheus gauges and the Prefect artifact.
"""

from loopline.drift.detect import DriftAccumulator, DriftReport, detect_drift
from loopline.drift.methods import DEFAULT_THRESHOLDS, METHODS, P_VALUE_METHODS
from loopline.drift.performance import performance_drift
from loopline.drift.profile import (
    ProfileBuilder,
    build_reference_profile,
    load_profile,
    profile_from_json,
    profile_to_json,
    save_profile,
)
from loopline.drift.render import drift_metrics_text, render_drift_markdown

__all__ = [
    "DEFAULT_THRESHOLDS",
    "METHODS",
    "P_VALUE_METHODS",
    "DriftAccumulator",
    "DriftReport",
    "ProfileBuilder",
    "build_reference_profile",
    "detect_drift",
    "drift_metrics_text",
    "load_profile",
    "performance_drift",
    "profile_from_json",
    "profile_to_json",
    "render_drift_markdown",
    "save_profile",
]
