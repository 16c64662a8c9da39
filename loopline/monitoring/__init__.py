"""Monitoring: drift from stored reference profiles (`profile`, built at training time; `detect`,
`methods`, `binning`, `performance`, `render`), the drift verdict log (`verdicts`), the retrain gates
(`retrain`: cooldown, freshness) and `status`. Pure numpy/scipy/pandas: no prefect, no mlflow at import.
Sits below train, because training stores the reference profile. Imports storage, data, packaging.
For Prometheus: `publish` (a batch job's gauges to $LOOPLINE_HOME/metrics and the Pushgateway),
`data_metrics` (a dataset's ledger counts), `exporter` (`python -m loopline.monitoring.exporter`)."""

from loopline._exports import lazy_exports

_EXPORTS = {
    "DriftAccumulator": "detect",
    "DriftReport": "detect",
    "detect_drift": "detect",
    "DEFAULT_THRESHOLDS": "methods",
    "METHODS": "methods",
    "P_VALUE_METHODS": "methods",
    "performance_drift": "performance",
    "ProfileBuilder": "profile",
    "build_reference_profile": "profile",
    "load_profile": "profile",
    "profile_from_json": "profile",
    "profile_to_json": "profile",
    "save_profile": "profile",
    "drift_metrics_text": "render",
    "render_drift_markdown": "render",
    "record_drift_verdict": "verdicts",
    "last_drift_verdict": "verdicts",
    "decide_cooldown": "retrain",
    "decide_freshness": "retrain",
    "collect_status": "status",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
