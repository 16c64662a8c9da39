"""The train task when training.launcher is `kubernetes` or `kubeflow`: the nodes run in pods of their own.

A Prefect Kubernetes work pool runs one pod per flow run, so this task (in the train flow on the cpu pool:
it asks for no GPU itself) starts the multi-node job, holds the `gpu` concurrency limit's nodes x devices
slots while the job runs, logs the pods' state, turns node 0's progress lines into the run's progress
artifact, and emits loopline.model.trained with node 0's result (loopline.train.k8s_launcher does the API
work). Retries follow or replace the job of the same run key, which resumes from its checkpoint. The
flow's on_cancellation hook `delete_training_jobs` deletes the jobs a cancelled flow run started.
"""

from __future__ import annotations

from typing import Any

from prefect import task

from loopline.config import LifecycleConfig
from tasks.common import lake_for, run_logger
from tasks.progress import report as report_progress
from tasks.training import ProgressArtifact, announce_trained, artifact_key, gpu_slot, retry_training


@task(
    name="train-model-on-kubernetes",
    retries=2,
    retry_delay_seconds=[10, 60],
    retry_condition_fn=retry_training,  # a failed job: retried (resumes); the user's mistakes: not
    task_run_name="train {dataset} on kubernetes",
)
def train_on_kubernetes(
    cfg: LifecycleConfig,
    dataset: str,
    fresh: bool = False,
    model_name: str | None = None,
    features_version: int | None = None,
) -> dict:
    """Train on features/D in a job of training.nodes pods and register a new version of model M."""
    from prefect.runtime import flow_run

    from loopline.errors import ConfigError
    from loopline.storage.names import check_name
    from loopline.train.k8s_launcher import KubernetesLauncher
    from loopline.train.k8s_manifests import LauncherSettings, latest_features_version, plan_launch
    from loopline.train.runkey import code_version, compute_run_key

    log = run_logger()
    tcfg = cfg.training
    model = model_name or cfg.model_name or dataset
    check_name(dataset, "dataset")
    check_name(model, "model")
    if fresh:
        raise ConfigError(
            f"--fresh with training.launcher {tcfg.launcher!r}: every pod of the job, and every pod that "
            "replaces a preempted one, runs the same command, so a fresh start would wipe the checkpoints the "
            "run is resuming from. Start over with training.launcher=local, or delete "
            "checkpoints/<model>/<run key> in the lake"
        )
    lake = lake_for(cfg)
    # Pin the features version: every node, every replacement pod and every retry trains on the same rows
    version = features_version if features_version is not None else latest_features_version(lake, dataset)
    run_key = compute_run_key(
        tcfg, dataset=dataset, model_name=model, features_version=version, code=code_version()
    )
    settings = LauncherSettings.from_env()
    plan = plan_launch(
        cfg,
        dataset=dataset,
        model_name=model,
        features_version=version,
        run_key=run_key,
        lake=lake,
        settings=settings,
        flow_run_id=flow_run.id,
    )
    launcher = KubernetesLauncher.connect(settings)
    # the GPUs are the job's pods': the slots are held while they run (nodes x devices)
    takes_slot = tcfg.gpu_slot and (plan.gpus_per_node or tcfg.gpu_slot_on_cpu)
    with gpu_slot(
        tcfg.gpu_slot if takes_slot else None, plan.nodes * tcfg.devices, tcfg.gpu_slot_timeout_seconds
    ):
        where = f"{plan.nodes} node(s) x {tcfg.devices} on {tcfg.launcher}"
        progress = ProgressArtifact(artifact_key(model), f"training {model} on {dataset} ({where})")

        def on_progress(payload: dict[str, Any]) -> None:
            progress.update(payload)  # the Prefect UI
            report_progress("train", **{**payload, "model": model})  # a progress bar here (the CLI)

        log.info("starting %s/%s (%s), run key %s", plan.namespace, plan.name, where, run_key)
        result = launcher.run(
            plan, on_progress=on_progress, on_status=lambda line: log.info("%s: %s", plan.name, line)
        )
        progress.update({"step": result["steps"], "total_steps": result["steps"]}, force=True)
        report_progress("train", model=model, step=result["steps"], total_steps=result["steps"], done=True)
    if result.get("run_key") != run_key:
        log.warning(
            "the pods trained under run key %s, this flow computed %s: the training image carries other code "
            "than the flow's (LOOPLINE_K8S_IMAGE vs this image)",
            result.get("run_key"),
            run_key,
        )
    return announce_trained(model, dataset, result)


def delete_training_jobs(flow, flow_run, state) -> None:
    """on_cancellation hook of the train flow: delete the jobs this flow run started (and their pods,
    Service and ConfigMap). Runs only for a run that trains on Kubernetes: others started none."""
    from loopline.config import resolve_config
    from loopline.train.k8s_launcher import KubernetesLauncher
    from loopline.train.k8s_manifests import LauncherSettings

    config = (flow_run.parameters or {}).get("config")
    try:
        launcher_kind = resolve_config(config).training.launcher
    except Exception:  # an unreadable config started no job either
        return
    if launcher_kind == "local":
        return
    deleted = KubernetesLauncher.connect(LauncherSettings.from_env()).delete_for_flow_run(str(flow_run.id))
    run_logger().info("cancelled: deleted training job(s) %s", ", ".join(deleted) or "(none had started)")
