"""Features flow: bring features/D up to date with clean/D (incremental, cached on clean's version)."""

from __future__ import annotations

from prefect import flow

from loopline.config import LifecycleConfig, resolve_config
from tasks.features import build_features


@flow(name="features", log_prints=True)
def features_flow(
    config: LifecycleConfig | None = None, refit: bool = False, dataset: str | None = None
) -> dict:
    """`dataset`: the dataset to build (the `features` trigger passes the event's); default: the config's."""
    cfg = resolve_config(config).for_dataset(dataset)
    return build_features(cfg, refit=refit)
