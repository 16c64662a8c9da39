"""Training flow: train on features/D and register a new model version (promotion is a later stage).

training.launcher `local` trains in this flow's process (on the gpu pool when deployed); `kubernetes` or
`kubeflow` start a job of training.nodes pods from here (this flow then needs no GPU: the cpu pool), and a
cancelled run deletes that job (on_cancellation).
"""

from __future__ import annotations

from prefect import flow

import flows.heartbeats  # noqa: F401  (flow runs end without waiting on their heartbeat thread)
from loopline.config import LifecycleConfig, resolve_config
from loopline.packaging.registry import contract_dataset
from tasks.training import train_model
from tasks.training_k8s import delete_training_jobs, train_on_kubernetes


@flow(name="train", log_prints=True, on_cancellation=[delete_training_jobs])
def train_flow(
    config: LifecycleConfig | None = None,
    dataset: str | None = None,
    fresh: bool = False,
    features_version: int | None = None,
) -> dict:
    return train_stage(resolve_config(config).for_dataset(dataset), fresh, features_version)


def train_stage(cfg: LifecycleConfig, fresh: bool = False, features_version: int | None = None) -> dict:
    """The train flow's body. A local launcher's task can run in the caller's flow run (the lifecycle);
    a Kubernetes or Kubeflow job needs this flow's run around it, whose cancellation deletes the job."""
    dataset = contract_dataset(cfg)
    # Train: resumes from this run key's latest checkpoint unless fresh; here, or in a job of its own
    train = train_model if cfg.training.launcher == "local" else train_on_kubernetes
    return train(cfg, dataset, fresh=fresh, model_name=cfg.model_name, features_version=features_version)
