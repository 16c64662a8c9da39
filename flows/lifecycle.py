"""The whole loop as one flow. Each stage is a subflow, so every step shows in the Prefect UI.

Its parameters are the few inputs people change per run (a contract file and a source for their own
data, or a dataset the lake knows, and a model name); the whole LifecycleConfig is an optional, advanced
parameter (the Prefect UI renders it as a form). With no source, a fresh synthetic demo batch is ingested.

ingest -> validate -> monitor the new batch against the champion (drift; the event starts `retrain` on a
server) -> features -> train -> evaluate + promote -> deploy to the model server.
"""

from __future__ import annotations

from prefect import flow

from loopline.config import LifecycleConfig, resolve_config


@flow(name="lifecycle", log_prints=True)
def lifecycle_flow(
    contract: str = "",
    source: str = "",
    dataset: str = "",
    model: str = "",
    config: LifecycleConfig | None = None,
) -> dict:
    """The whole loop on one dataset: ingest -> validate -> drift check -> features -> train -> evaluate ->
    promote -> deploy. Plain text fields (empty means "not set"), so the Prefect UI shows them as inputs.

    Args:
        contract: Path of a dataset contract (YAML), needed the first time a dataset is ingested.
        source: File, folder or s3:// prefix to ingest. Empty: a fresh synthetic demo batch.
        dataset: A dataset the lake already knows (its contract comes from the lake).
        model: Registered model name. Empty: the dataset's name.
        config: Every other setting (training, evaluation, drift ...). Empty: the platform's configuration.
    """
    from flows.deployment import deployment_flow
    from flows.drift import drift_flow
    from flows.features import features_flow
    from flows.ingest import ingest_flow
    from flows.promotion import promotion_flow
    from flows.training import train_flow
    from tasks.approval import hand_off_promotion

    cfg = resolve_config(config).with_inputs(contract=contract, source=source, dataset=dataset, model=model)
    result: dict = {}
    # Ingest + validate: land the batch, quarantine bad rows (a rejected batch stops the run here)
    result["ingest"] = batches = ingest_flow(cfg)
    # Monitor: is the new data still what the champion was trained on? (skipped before the first champion)
    fresh = [b for b in batches if b["accepted"] and not b["duplicate_batch"]]
    if fresh:
        model = cfg.model_name or fresh[-1]["dataset"]
        result["drift"] = drift_flow(
            cfg, model=model, current=f"batch:{fresh[-1]['batch_id']}", skip_unknown_model=True
        )
    # Features: versioned, incremental
    result["features"] = features = features_flow(cfg)
    # Train: on exactly the features version just built; resumes after any interruption
    result["train"] = trained = train_flow(
        cfg, dataset=features["dataset"], features_version=features["features_version"]
    )
    # Evaluate + promote: against @champion on the same test rows; a refusal keeps the champion in place.
    # With approval required, the promotion deployment's own run waits for the person, not this run
    version = int(trained["model_version"])
    handed = hand_off_promotion(cfg, trained["model_name"], version) if cfg.rollout.require_approval else None
    result["promote"] = promoted = handed or promotion_flow(cfg, model=trained["model_name"], version=version)
    # Deploy: the model server serves @champion (started if none runs); an unhealthy swap rolls back
    if cfg.serving.deploy and not promoted.get("awaiting_approval"):
        result["deploy"] = deployment_flow(cfg, model=trained["model_name"], start_if_missing=True)
    result["champion_version"] = promoted.get("champion_version")
    return result
