"""`loopline status`: what is in the lake and the registry, read cheaply (Delta logs, registry metadata)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loopline.config import LifecycleConfig
from loopline.data.contract_registry import describe, latest_contract, require_contract
from loopline.monitoring.verdicts import last_drift_verdict
from loopline.packaging.registry import (
    CHALLENGER,
    CHAMPION,
    PREVIOUS,
    default_tracking_uri,
    experiment_name,
    registry_client,
)
from loopline.storage import delta
from loopline.storage.lake import TABLE_KINDS, Lake


def list_datasets(lake: Lake) -> list[str]:
    names: set[str] = set()
    for kind in ("raw", "clean"):
        prefix = lake.uri(kind)
        if lake.is_s3:
            names |= {u[len(prefix) + 1 :].split("/", 1)[0] for u in lake.list(prefix)}
        elif Path(prefix).is_dir():
            names |= {p.name for p in Path(prefix).iterdir() if p.is_dir()}
    return sorted(names)


def table_summary(lake: Lake, kind: str, name: str) -> dict[str, Any] | None:
    table = delta.open_table(lake, lake.table_uri(kind, name))
    if table is None:
        return None
    actions = table.get_add_actions(flatten=True)
    rows = sum(v or 0 for v in actions.column("num_records").to_pylist()) if actions.num_rows else 0
    return {"version": table.version(), "rows": rows, "files": actions.num_rows}


def collect_status(
    cfg: LifecycleConfig, *, dataset: str | None = None, model: str | None = None
) -> dict[str, Any]:
    lake = Lake.from_env(cfg.home)
    datasets = {}
    names = [dataset] if dataset else list_datasets(lake)
    if dataset:
        require_contract(lake, dataset)  # an unknown dataset is exit 2, naming the known ones
    for name in names:
        contract = latest_contract(lake, name)
        tables = {kind: table_summary(lake, kind, name) for kind in TABLE_KINDS if kind != "predictions"}
        ledger = delta.open_table(lake, lake.uri("batches", name))
        batches = ledger.to_pyarrow_dataset().to_table().to_pylist() if ledger is not None else []
        datasets[name] = {
            "tables": tables,
            "batches_accepted": sum(b["status"] == "accepted" for b in batches),
            "batches_rejected": len({b["batch_id"] for b in batches if b["status"] == "rejected"}),
            "contract": describe(contract) if contract is not None else None,
        }
    out: dict[str, Any] = {"home": str(Path(cfg.home).resolve()), "lake": lake.root, "datasets": datasets}
    out["models"] = _models(cfg, model)
    if model is not None:
        out.update(out["models"].get(model, {}))
    return out


def _models(cfg: LifecycleConfig, only: str | None) -> dict[str, Any]:
    """Per registered model: champion, previous, latest version, last runs, last drift verdict."""
    from pathlib import Path as _Path

    uri = default_tracking_uri(cfg.home)
    if uri.startswith("sqlite:///") and not _Path(uri.removeprefix("sqlite:///")).exists():
        return {}
    client = registry_client(uri)  # imports mlflow (2 s) only when there is a registry to read
    lake = Lake.from_env(cfg.home)
    names = [only] if only else [m.name for m in client.search_registered_models()]
    out: dict[str, Any] = {}
    for name in names:
        try:
            registered = client.get_registered_model(name)
        except Exception:  # not registered (yet)
            out[name] = {
                "champion_version": None,
                "latest_version": None,
                "last_runs": [],
                "last_drift": None,
            }
            continue
        aliases = {alias: int(version) for alias, version in (registered.aliases or {}).items()}
        versions = client.search_model_versions(f"name='{name}'")
        latest = max((int(v.version) for v in versions), default=None)
        out[name] = {
            "champion_version": aliases.get(CHAMPION),
            "previous_version": aliases.get(PREVIOUS),
            "challenger_version": aliases.get(CHALLENGER),
            "latest_version": latest,
            "last_runs": _last_runs(client, name),
            "last_drift": last_drift_verdict(lake, name),
        }
    return out


def _last_runs(client, model: str, limit: int = 5) -> list[dict[str, Any]]:
    experiment = client.get_experiment_by_name(experiment_name(model))
    if experiment is None:
        return []
    runs = client.search_runs(
        [experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=limit
    )
    return [
        {
            "run_id": r.info.run_id,
            "name": r.info.run_name,
            "status": r.info.status,
            "started_at": r.info.start_time,
            "metrics": {k: v for k, v in r.data.metrics.items() if k.startswith(("val_", "test_"))},
        }
        for r in runs
    ]
