"""Features flow: bring features/D up to date with clean/D (incremental, cached on clean's version)."""

from __future__ import annotations

from prefect import flow

from loopline.config import LifecycleConfig, resolve_config
from tasks.features import build_features


@flow(name="features", log_prints=True)
def features_flow(config: LifecycleConfig | None = None, refit: bool = False) -> dict:
    cfg = resolve_config(config)
    return build_features(cfg, refit=refit)
