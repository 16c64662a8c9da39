"""The whole loop as one flow run. Each stage's tasks run in it, so every step shows in the Prefect UI (a task
run per step, named after it, with its own retries); promotion is a subflow run of its own. The task runs carry
no stage tags on purpose: Prefect 3.8.8 acquires a tag-concurrency lease for every tagged task run (a service
thread and an API round trip per tag set), which cost ~1.3 s per task here, more than the subflows it replaced.

Its parameters are the few inputs people change per run (a contract file and a source for their own
data, or a dataset the lake knows, and a model name); the whole LifecycleConfig is an optional, advanced
parameter (the Prefect UI renders it as a form). With no source, a fresh synthetic demo batch is ingested.

ingest -> validate -> monitor the new batch against the champion (drift; the event starts `retrain` on a
server) -> features -> train -> evaluate + promote -> deploy to the model server.

Why one flow run and not a subflow per stage: Prefect's sync engine ends every flow run by joining its
heartbeat thread, which sleeps in whole seconds (Prefect's default heartbeats), so each subflow cost up to a
second; seven of them were a quarter of the loop's wall time. That join is gone too (flows/heartbeats.py):
the two runs left no longer wait on it. The stages' tasks keep their names, retries and artifacts here.
Promotion stays a flow run (an approval pauses that run, not the loop), as do the runs that need one
around them: Dask executors, a Kubernetes or Kubeflow training job. An unchanged rerun (same source,
seed and id_offset) is decided stage by stage from metadata (tasks/stage_cache.py): each stage shows
Cached, and the promotion flow run is not started when its decision is recorded and @champion unchanged.
"""

from __future__ import annotations

from prefect import flow
from prefect.states import State

import flows.heartbeats  # noqa: F401  (flow runs end without waiting on their heartbeat thread)
from loopline.config import LifecycleConfig, resolve_config
from tasks.common import unlinked


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
    from flows.deployment import deploy_stage
    from flows.drift import check_drift
    from flows.features import features_stage
    from flows.ingest import ingest_stage
    from flows.promotion import promotion_flow
    from flows.training import train_flow, train_stage
    from tasks.approval import hand_off_promotion
    from tasks.promotion import promotion_unchanged, recorded_promotion, warm_infra_validation
    from tasks.training import training_recorded

    cfg = resolve_config(config).with_inputs(contract=contract, source=source, dataset=dataset, model=model)
    result: dict = {}
    # Ingest + validate: land the batch, quarantine bad rows (a rejected batch stops the run here)
    result["ingest"] = batches = ingest_stage(cfg)
    # Monitor: is the new data still what the champion was trained on? (skipped before the first champion)
    fresh = [b for b in batches if b["accepted"] and not b["duplicate_batch"]]
    if fresh:
        model = cfg.model_name or fresh[-1]["dataset"]
        checked = check_drift(cfg, model, f"batch:{fresh[-1]['batch_id']}", None, True)
        result["drift"] = checked.result() if isinstance(checked, State) else checked
    # Features: versioned, incremental
    result["features"] = features = features_stage(cfg)
    # Train: on exactly the features version just built; resumes after any interruption. A job on
    # Kubernetes/Kubeflow keeps the train flow's run around it (its cancellation deletes the job)
    train_cfg = cfg.for_dataset(features["dataset"])
    version_built = features["features_version"]
    new_model = not training_recorded(train_cfg, features["dataset"], version_built)
    if new_model and not cfg.rollout.require_approval:
        warm_infra_validation()  # its promotion runs here: the validation process warms up during training
    if cfg.training.launcher == "local":
        trained = train_stage(train_cfg, features_version=version_built)
    else:
        trained = train_flow(cfg, dataset=features["dataset"], features_version=version_built)
    result["train"] = trained
    name = unlinked(trained["model_name"])
    # Evaluate + promote: against @champion on the same test rows; a refusal keeps the champion in place.
    # Its own flow run: with approval required, the promotion deployment's run waits, not this one
    version = int(trained["model_version"])
    handed = hand_off_promotion(cfg, name, version) if cfg.rollout.require_approval else None
    if handed is not None or cfg.rollout.require_approval:
        promoted = handed or promotion_flow(cfg, model=unlinked(name), version=version)
    elif (recorded := recorded_promotion(cfg, name, version)) is not None:
        promoted = promotion_unchanged(cfg, name, version, recorded)
    else:
        promoted = promotion_flow(cfg, model=unlinked(name), version=version)
    result["promote"] = promoted
    # Deploy: the model server serves @champion (started if none runs); an unhealthy swap rolls back
    if cfg.serving.deploy and not promoted.get("awaiting_approval"):
        result["deploy"] = deploy_stage(cfg, name, start_if_missing=True)
    result["champion_version"] = promoted.get("champion_version")
    return result
