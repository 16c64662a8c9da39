"""Maintenance flow (`loopline maintenance`, the nightly `maintenance` deployment): compact the lake's
append-heavy Delta tables, delete predictions older than `lake.predictions_retention_days`, vacuum files no
version within `lake.file_retention_hours` uses. clean/D and features/D keep every version a model recorded
(loopline/storage/maintenance.py says why and how)."""

from __future__ import annotations

from typing import Any

from prefect import flow

import flows.heartbeats  # noqa: F401  (flow runs end without waiting on their heartbeat thread)
from loopline.config import LifecycleConfig, resolve_config
from tasks.common import run_logger
from tasks.maintenance import maintain_lake


@flow(name="maintenance", log_prints=True)
def maintenance_flow(
    config: LifecycleConfig | None = None,
    dataset: str | None = None,
    model: str | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Maintain every Delta table of the lake, or only `dataset`'s (raw, quarantine, clean, features,
    batches, contracts) and/or `model`'s (predictions, its dead letters, feedback, drift). `dry_run`:
    commit and delete nothing, report what would happen. Returns per table: Delta versions and files
    before/after, rows expired, files and bytes vacuumed, and `failed`: the tables whose commits kept
    conflicting."""
    cfg = resolve_config(config)

    # Compact, expire, vacuum: one table at a time, each step its own commit
    result = maintain_lake(cfg, dataset=dataset or None, model=model or None, dry_run=dry_run)

    if result["failed"]:  # a later run picks them up again; nothing was lost
        run_logger().error("maintenance left %s as they were: see the per-table errors", result["failed"])
    return result
