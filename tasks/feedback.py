"""Label feedback outside the server: bulk labels (`loopline feedback`), and live performance for the
drift flow (predictions/M joined with feedback/M, published as Prometheus gauges).

`model_contract` finds a model's contract without loading the model: the lake's contract of the dataset named
like the model (the default: a model is named after its dataset), else the dataset its newest registered
version was trained on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from loopline.config import LifecycleConfig
from loopline.data.contracts import Contract
from tasks.common import lake_for, run_logger


def model_contract(cfg: LifecycleConfig, model: str, dataset: str | None = None) -> Contract:
    from loopline.data.contract_registry import latest_contract, require_contract

    lake = lake_for(cfg)
    if dataset is None:
        found = latest_contract(lake, model)
        if found is not None:
            return found.contract
        from loopline.packaging.registry import dataset_of_model, registry_client
        from tasks.drift import tracking_uri

        dataset = dataset_of_model(registry_client(tracking_uri(cfg)), model) or model
    return require_contract(lake, dataset)


def publish_live(cfg: LifecycleConfig, model: str, contract: Contract) -> dict[str, Any]:
    """Compute every version's live metric now and publish the gauges (job "live", model=M): the textfile
    the exporter serves, and the Pushgateway when configured. Returns the `live_performance` result."""
    from loopline.monitoring.live import live_metrics_text, live_performance
    from loopline.monitoring.publish import publish
    from loopline.storage.names import check_name

    result = live_performance(
        lake_for(cfg),
        model,
        contract,
        metric=cfg.evaluation.primary_metric,
        windows_hours=cfg.feedback.windows_hours,
        min_rows=cfg.feedback.min_labelled_rows,
    )
    publish(cfg.home, "live", live_metrics_text(result), {"model": check_name(model, "model")})
    return result


def load_feedback(
    cfg: LifecycleConfig, model: str, source: str, dataset: str | None = None
) -> dict[str, Any]:
    """`loopline feedback`: land a file's labels, then refresh the live gauges."""
    from loopline.serving.feedback_bulk import load_feedback_file
    from loopline.storage.names import check_name

    check_name(model, "model")
    contract = model_contract(cfg, model, dataset)
    report = load_feedback_file(
        lake_for(cfg), model, source, contract, rejected_dir=Path(cfg.home) / "rejected"
    )
    live = publish_live(cfg, model, contract)
    report["live"] = {
        "metric": live["metric"],
        "labelled_rows": live["labelled_rows"],
        "versions": live["versions"],
    }
    return report


@task(name="live-performance")
def live_performance_check(
    cfg: LifecycleConfig, champion: dict[str, Any], window_hours: float
) -> dict | None:
    """The champion's live metric over the drift window (None without labels), compared with its evaluation
    metric when `feedback.performance_tolerance` is set (then `degraded` counts as drift). Publishes every
    version's live gauges on the way. A failure here is logged: it never fails the drift check."""
    import yaml

    from loopline.data.contracts import parse_contract
    from loopline.monitoring.performance import LOWER_IS_BETTER

    log = run_logger()
    try:
        bundle = Path(champion["bundle_dir"])
        contract = parse_contract(yaml.safe_load((bundle / "contract.yaml").read_text()))
        live = publish_live(cfg, champion["model"], contract)
    except Exception as exc:
        log.warning("live performance of %s skipped: %s", champion["model"], exc)
        return None
    if not live["labelled_rows"]:
        return None
    windows = live["versions"].get(str(champion["version"]), {})
    key = f"{window_hours:g}h" if f"{window_hours:g}h" in windows else "all"
    point = windows.get(key, {"value": None, "rows": 0})
    out = {"metric": live["metric"], "window": key, "current": point["value"], "n_labelled": point["rows"]}
    reference = _reference_metric(cfg, champion, live["metric"])
    tolerance = cfg.feedback.performance_tolerance
    out |= {"reference": reference, "tolerance": tolerance, "degraded": False}
    if point["value"] is not None and reference is not None and tolerance is not None:
        worse = (
            (point["value"] - reference)
            if live["metric"] in LOWER_IS_BETTER
            else (reference - point["value"])
        )
        out["degraded"] = bool(worse > tolerance)
    log.info("live %s of %s v%s (%s): %s on %d labelled rows", live["metric"], champion["model"],
             champion["version"], key, point["value"], point["rows"])  # fmt: skip
    return out


def _reference_metric(cfg: LifecycleConfig, champion: dict[str, Any], metric: str) -> float | None:
    """The metric the champion was promoted with (its evaluation, in the registry's champion history)."""
    try:
        from loopline.packaging.registry import registry_client
        from loopline.release.champion import read_state
        from tasks.drift import tracking_uri

        state = read_state(registry_client(tracking_uri(cfg)), champion["model"])
        for entry in reversed(getattr(state, "history", None) or []):
            if str(entry.get("champion")) == str(champion["version"]):
                value = (entry.get("metrics") or {}).get(metric)
                return float(value) if value is not None else None
    except Exception:  # no history (a champion set by hand): reported without a reference
        return None
    return None
