"""The whole loop as one flow. Each stage is a subflow, so every step shows in the Prefect UI.

Its one parameter is the LifecycleConfig, which the Prefect UI renders as a form.
"""

from __future__ import annotations

from prefect import flow

from loopline.config import LifecycleConfig


@flow(name="lifecycle", log_prints=True)
def lifecycle_flow(config: LifecycleConfig | None = None) -> dict:
    from flows.features import features_flow
    from flows.ingest import ingest_flow
    from flows.promotion import promotion_flow
    from flows.training import train_flow

    cfg = config or LifecycleConfig()
    result: dict = {}
    # Ingest + validate: land the batch, quarantine bad rows
    result["ingest"] = ingest_flow(cfg)
    # Features: versioned, incremental
    result["features"] = features = features_flow(cfg)
    # Train: on exactly the features version just built; resumes after any interruption
    result["train"] = trained = train_flow(
        cfg, dataset=features["dataset"], features_version=features["features_version"]
    )
    # Evaluate + promote: against @champion on the same test rows; a refusal keeps the champion in place
    result["promote"] = promotion_flow(
        cfg, model=trained["model_name"], version=int(trained["model_version"])
    )
    return result
