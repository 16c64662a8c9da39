"""Training flow: train on features/D and register a new model version (promotion is a later stage)."""

from __future__ import annotations

from prefect import flow

from loopline.config import LifecycleConfig, resolve_config
from loopline.packaging.registry import contract_dataset
from tasks.training import train_model


@flow(name="train", log_prints=True)
def train_flow(
    config: LifecycleConfig | None = None,
    dataset: str | None = None,
    fresh: bool = False,
    features_version: int | None = None,
) -> dict:
    cfg = resolve_config(config).for_dataset(dataset)
    dataset = contract_dataset(cfg)
    # Train: resumes from this run key's latest checkpoint unless fresh
    return train_model(
        cfg, dataset, fresh=fresh, model_name=cfg.model_name, features_version=features_version
    )
