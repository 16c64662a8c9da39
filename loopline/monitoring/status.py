"""`loopline status`: what is in the lake and the registry, read cheaply (Delta logs, registry metadata).

The lake is `Lake.from_env`: the CLI resolves a LOOPLINE_LAKE_BLOCK and hands its lake over in the
environment (blocks/lake.py), so status reads the lake every other process writes."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from loopline.config import LifecycleConfig
from loopline.data.contract_registry import describe, latest_contract, require_contract
from loopline.monitoring.verdicts import last_drift_verdict
from loopline.packaging import mlflow_sqlite
from loopline.packaging.mlflow_sqlite import DELETED_VERSION_STAGE, select
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

LAST_RUNS = 5  # runs shown per model


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
    files, rows = delta.files_and_rows(table)
    return {"version": table.version(), "rows": rows, "files": files}


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
        batches = delta.dataset(ledger).to_table().to_pylist() if ledger is not None else []
        datasets[name] = {
            "tables": tables,
            "batches_accepted": sum(b["status"] == "accepted" for b in batches),
            "batches_rejected": len({b["batch_id"] for b in batches if b["status"] == "rejected"}),
            "contract": describe(contract) if contract is not None else None,
        }
    out: dict[str, Any] = {"home": str(Path(cfg.home).resolve()), "lake": lake.root, "datasets": datasets}
    out["models"] = _models(cfg, model, lake)
    if model is not None:
        out.update(out["models"].get(model, {}))
    return out


def _models(cfg: LifecycleConfig, only: str | None, lake: Lake) -> dict[str, Any]:
    """Per registered model: champion, previous, latest version, last runs, last drift verdict.

    The embedded registry (sqlite:///$LOOPLINE_HOME/mlflow.db) is read with sqlite3, read-only: importing
    MLflow and opening its store costs ~2.5 s, most of a `loopline status`. A schema this reader does not
    know, and any other tracking URI (`loopline up`'s MLflow server), go through MLflow's client."""
    uri = default_tracking_uri(cfg.home)
    facts = None
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.exists():
            return {}
        try:
            facts = _registry_from_sqlite(path, only)
        except sqlite3.Error:  # another MLflow schema, a locked file: MLflow's client knows better
            facts = None
    if facts is None:
        facts = _registry_from_mlflow(uri, only)
    out: dict[str, Any] = {}
    for name, fact in facts.items():
        if fact is None:  # not registered (yet)
            out[name] = {
                "champion_version": None,
                "latest_version": None,
                "last_runs": [],
                "last_drift": None,
            }
            continue
        aliases = fact["aliases"]
        out[name] = {
            "champion_version": aliases.get(CHAMPION),
            "previous_version": aliases.get(PREVIOUS),
            "challenger_version": aliases.get(CHALLENGER),
            "latest_version": fact["latest_version"],
            "last_runs": fact["last_runs"],
            "last_drift": last_drift_verdict(lake, name),
        }
    return out


def _registry_from_mlflow(uri: str, only: str | None) -> dict[str, dict[str, Any] | None]:
    """{model: {aliases, latest_version, last_runs}} (None: not registered) through MLflow's client."""
    client = registry_client(uri)  # imports mlflow (~1.5 s) and opens its store (~1 s)
    names = [only] if only else [m.name for m in client.search_registered_models()]
    facts: dict[str, dict[str, Any] | None] = {}
    for name in names:
        try:
            registered = client.get_registered_model(name)
        except Exception:  # not registered (yet)
            facts[name] = None
            continue
        versions = client.search_model_versions(f"name='{name}'")
        facts[name] = {
            "aliases": {alias: int(version) for alias, version in (registered.aliases or {}).items()},
            "latest_version": max((int(v.version) for v in versions), default=None),
            "last_runs": _last_runs(client, name),
        }
    return facts


def _last_runs(client, model: str, limit: int = LAST_RUNS) -> list[dict[str, Any]]:
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
            "metrics": _shown_metrics(r.data.metrics),
        }
        for r in runs
    ]


def _registry_from_sqlite(path: Path, only: str | None) -> dict[str, dict[str, Any] | None]:
    """The same facts as `_registry_from_mlflow`, read from MLflow's SQLite store as MLflow's SQL store
    reads them: the default workspace, deleted versions and runs left out, runs newest first (ties by id),
    each run's latest metrics."""
    db = mlflow_sqlite.connect(path)
    try:
        names_known = {row[0] for row in select(db, "registered_models", "SELECT name FROM {t} WHERE 1")}
        facts: dict[str, dict[str, Any] | None] = {}
        for name in [only] if only else sorted(names_known):
            if name not in names_known:
                facts[name] = None
                continue
            aliases = select(
                db, "registered_model_aliases", "SELECT alias, version FROM {t} WHERE name = ?", name
            )
            ((latest,),) = select(
                db,
                "model_versions",
                "SELECT MAX(version) FROM {t} WHERE name = ? AND current_stage != ?",
                name,
                DELETED_VERSION_STAGE,
            )
            facts[name] = {
                "aliases": {alias: int(version) for alias, version in aliases},
                "latest_version": int(latest) if latest is not None else None,
                "last_runs": _last_runs_sqlite(db, name),
            }
        return facts
    finally:
        db.close()


def _last_runs_sqlite(db: sqlite3.Connection, model: str, limit: int = LAST_RUNS) -> list[dict[str, Any]]:
    experiment = select(
        db, "experiments", "SELECT experiment_id FROM {t} WHERE name = ?", experiment_name(model)
    )
    if not experiment:
        return []
    runs = db.execute(
        "SELECT run_uuid, name, status, start_time FROM runs WHERE experiment_id = ? AND lifecycle_stage = 'active'"
        " ORDER BY start_time DESC, run_uuid LIMIT ?",
        (experiment[0][0], limit),
    ).fetchall()
    out = []
    for run_id, name, status, started_at in runs:
        metrics = db.execute("SELECT key, value, is_nan FROM latest_metrics WHERE run_uuid = ?", (run_id,))
        values = {key: float("nan") if is_nan else value for key, value, is_nan in metrics}
        out.append(
            {
                "run_id": run_id,
                "name": name,
                "status": status,
                "started_at": started_at,
                "metrics": _shown_metrics(values),
            }
        )
    return out


def _shown_metrics(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k.startswith(("val_", "test_"))}
