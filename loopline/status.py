"""`loopline status`: what is in the lake and the registry, read cheaply (Delta logs, registry metadata)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loopline import delta
from loopline.config import LifecycleConfig
from loopline.lake import TABLE_KINDS, Lake


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


def collect_status(cfg: LifecycleConfig, *, dataset: str | None = None, model: str | None = None) -> dict[str, Any]:
    lake = Lake.from_env(cfg.home)
    datasets = {}
    for name in [dataset] if dataset else list_datasets(lake):
        tables = {kind: table_summary(lake, kind, name) for kind in TABLE_KINDS if kind != "predictions"}
        ledger = delta.open_table(lake, lake.uri("batches", name))
        batches = ledger.to_pyarrow_dataset().to_table().to_pylist() if ledger is not None else []
        datasets[name] = {
            "tables": tables,
            "batches_accepted": sum(b["status"] == "accepted" for b in batches),
            "batches_rejected": len({b["batch_id"] for b in batches if b["status"] == "rejected"}),
        }
    out: dict[str, Any] = {"home": str(Path(cfg.home).resolve()), "lake": lake.root, "datasets": datasets}
    out["models"] = _models(cfg, model)
    if model is not None:
        out.update(out["models"].get(model, {}))
    return out


def _models(cfg: LifecycleConfig, only: str | None) -> dict[str, Any]:
    try:
        from loopline.registry import model_status
    except ImportError:  # the registry module arrives with training
        return {}
    return model_status(cfg, only)
