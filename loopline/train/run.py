"""`run_training`: one training run end to end, without Prefect.

features/D at one version -> run key -> resume or start -> train (in-process, or DDP under torchrun)
-> MLflow run (config as params, data versions and code version as tags, per-step metrics, GPU summary)
-> bundle -> pyfunc logged and registered as a NEW version of model M (no alias) -> reference profile.
A second call with the same run key resumes from the latest good checkpoint, or, when that run already
finished and registered its model, returns the same result without training again.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loopline.config import LifecycleConfig, config_to_flat_params
from loopline.errors import ConfigError
from loopline.storage.lake import Lake
from loopline.train.checkpoint import CheckpointStore
from loopline.train.inputs import TrainingInputs, example_rows, load_training_inputs, read_raw_rows
from loopline.train.outcome import TrainOutcome
from loopline.train.preemption import Preempted, PreemptionWatch
from loopline.train.runkey import code_version, compute_run_key
from loopline.train.topology import check_launcher, resolve_topology

log = logging.getLogger(__name__)

RESULT_TAG = "loopline.result"
REFERENCE_PROFILE_ROWS = 100_000  # raw train rows profiled for drift: quantiles are stable long before this
RESUMABLE_STATUSES = ("RUNNING", "FAILED", "KILLED")


def run_training(
    cfg: LifecycleConfig,
    dataset: str,
    *,
    lake: Lake,
    tracking_uri: str | None = None,
    model_name: str | None = None,
    fresh: bool = False,
    features_version: int | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    gpu_slot_held: bool = False,
) -> dict[str, Any]:
    """Train, log and register. Returns the CLI JSON (see module docstring). Raises Preempted when
    stopped by SIGTERM or a spot notice (after a checkpoint): call again to resume.
    `gpu_slot_held`: the caller holds the run's GPU slot meanwhile (exported with the run's progress
    gauges, loopline.train.telemetry)."""
    import mlflow

    from loopline.packaging.registry import (
        default_tracking_uri,
        ensure_experiment,
        experiment_name,
        find_runs_by_key,
        registry_client,
    )

    tcfg = cfg.training
    model_name = model_name or cfg.model_name or dataset

    check_launcher(tcfg)
    if tcfg.nodes > 1 and features_version is None:
        raise ConfigError(
            f"training.nodes is {tcfg.nodes}: pass --features-version V (the same on every node), so that all "
            "nodes read the same rows and meet under one run key"
        )
    # Inputs: one features version for the whole run, its retries and all its workers
    inputs = load_training_inputs(lake, dataset, features_version)
    code = code_version()
    run_key = compute_run_key(
        tcfg, dataset=dataset, model_name=model_name, features_version=inputs.features_version, code=code
    )
    store = CheckpointStore(lake, lake.uri("checkpoints", model_name, run_key), tcfg.keep_last_checkpoints)
    checkpoint_meta = {
        "config": tcfg.model_dump(mode="json"),
        "data_versions": inputs.data_versions,
        "run_key": run_key,
        "code_version": code,
        "dataset": dataset,
        "model_name": model_name,
    }
    topology = resolve_topology(tcfg, run_key)  # nodes > 1: node 0 tracks and registers, the others follow
    if topology.node_rank > 0:
        from loopline.train.node import follow_run

        return follow_run(
            cfg,
            inputs.data,
            lake=lake,
            store=store,
            topology=topology,
            meta=checkpoint_meta,
            fresh=fresh,
            on_progress=on_progress,
        )
    if fresh:
        removed = store.clear()
        log.info("--fresh: deleted %d checkpoint(s) of run key %s", removed, run_key)

    # Tracking: an earlier attempt of this run key is continued, a finished one is returned as is
    tracking_uri = tracking_uri or default_tracking_uri(cfg.home)
    # both, always: mlflow keeps them process-wide, and a worker or test process runs many stages
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = registry_client(tracking_uri)
    experiment_id = ensure_experiment(client, experiment_name(model_name), cfg.home, tracking_uri)
    previous = [] if fresh else find_runs_by_key(client, experiment_id, run_key)
    for run in previous:
        if run.info.status == "FINISHED" and RESULT_TAG in run.data.tags:
            log.info(
                "run key %s already trained and registered (run %s): nothing to do", run_key, run.info.run_id
            )
            return {**json.loads(run.data.tags[RESULT_TAG]), "reused_run": True}
    resume_run = next((r for r in previous if r.info.status in RESUMABLE_STATUSES), None)

    # Device: pick GPUs by free memory before CUDA starts in this process or its workers
    from loopline.train.gpu import GpuSampler, apply_gpu_choice, describe_device

    if tcfg.device != "cpu":
        apply_gpu_choice(tcfg.devices)
    from loopline.train.loop import resolve_device

    device = resolve_device(tcfg.device)
    hardware = describe_device() if device.type == "cuda" else {"kind": "cpu"}

    active = mlflow.active_run()
    run_ctx = mlflow.start_run(
        run_id=resume_run.info.run_id if resume_run else None,
        experiment_id=None if resume_run else experiment_id,
        run_name=None if resume_run else f"{model_name}-{run_key[:8]}",
        nested=active is not None,
        log_system_metrics=_system_metrics_available(),
    )
    with run_ctx as run:
        run_id = run.info.run_id
        _log_params(client, run_id, cfg, resumed=resume_run is not None)
        from loopline.data.contract_registry import contract_version_of

        # the lake's number for the contract the features follow (absent: a contract the lake never saw)
        contract_version = contract_version_of(lake, dataset, inputs.contract.hash)
        if contract_version is not None:
            mlflow.set_tag("contract.version", str(contract_version))
        mlflow.set_tags(
            {
                "loopline.run_key": run_key,
                "loopline.dataset": dataset,
                "loopline.model_name": model_name,
                "data.features_version": str(inputs.features_version),
                "data.transform_version": inputs.transform_version,
                "data.clean_version": "" if inputs.clean_version is None else str(inputs.clean_version),
                "contract.hash": inputs.contract.hash,
                "code.version": code,
                "training.device": device.type,
                "training.devices": str(tcfg.devices),
                "training.nodes": str(tcfg.nodes),
                "gpu.name": hardware.get("gpu_name", "none"),
            }
        )
        from loopline.train.tracking import MlflowMetricLogger

        sampler = GpuSampler(tcfg.gpu_sample_seconds).start()
        metric_logger = MlflowMetricLogger(tracking_uri, run_id)
        from loopline.train.telemetry import TrainingTelemetry

        telemetry = TrainingTelemetry(
            cfg.home,
            model_name,
            run_id,
            sampler=sampler,
            price_per_gpu_hour=tcfg.gpu_price_per_hour,
            gpu_slot_held=gpu_slot_held,
            nodes=tcfg.nodes,  # node 0 publishes for the run; each node holds as many GPUs as this one
        ).start()

        def progress(payload: dict[str, Any]) -> None:
            telemetry.progress(payload)  # stores numbers; a thread of its own publishes them
            if on_progress:
                on_progress(payload)

        try:
            with PreemptionWatch(
                spot_notice_url=tcfg.spot_notice_url,
                spot_notice_file=tcfg.spot_notice_file,
                poll_seconds=tcfg.spot_poll_seconds,
            ) as watch:
                from loopline.train.node import run_is_finished

                # a finished run key is read back in this process: no rendezvous for nothing to train
                if topology.world_size > 1 and not (topology.multi_node and run_is_finished(store)):
                    from loopline.train.ddp import launch_ddp

                    spec = {
                        "config": cfg.model_dump(mode="json"),
                        "checkpoint_prefix": store.prefix_uri,
                        "checkpoint_meta": checkpoint_meta,
                    }
                    outcome = launch_ddp(
                        spec,
                        inputs.data,
                        lake=lake,
                        topology=topology,
                        watch=watch,
                        on_progress=progress,
                        on_metrics=metric_logger.log,
                    )
                else:
                    from loopline.train.loop import train_loop

                    result = train_loop(
                        tcfg,
                        inputs.data,
                        store=store,
                        device=device,
                        meta=checkpoint_meta,
                        watch=watch,
                        on_metrics=metric_logger.log,
                        on_progress=progress,
                    )
                    outcome = TrainOutcome.from_loop(result)
                    outcome.state_dict = result.state_dict
        except Preempted as exc:
            metric_logger.close()
            sampler.stop()
            mlflow.set_tags({"loopline.preempted": exc.reason, "loopline.preempted_at_step": str(exc.step)})
            mlflow.end_run(status="KILLED")  # a later attempt with this run key continues this run
            raise
        finally:
            metric_logger.close()
            sampler.stop()
            telemetry.close()

        gpu = sampler.summary(tcfg.gpu_price_per_hour)
        _log_summary(outcome, gpu)
        registered = _register(cfg, lake, inputs, outcome, model_name=model_name, run_key=run_key, code=code)
        result_json = {
            "run_id": run_id,
            "model_name": model_name,
            "model_version": registered["model_version"],
            "model_uri": registered["model_uri"],
            "steps": outcome.steps,
            "resumed_from_step": outcome.resumed_from_step,
            "state_sha256": outcome.state_sha256,
            "device": outcome.device,
            "devices": outcome.world_size,
            "precision": outcome.precision,
            "samples_per_s": outcome.samples_per_s,
            "gpu": gpu,
            "run_key": run_key,
            "features_version": inputs.features_version,
            "clean_version": inputs.clean_version,
            "code_version": code,
            "val_metrics": outcome.val_metrics,
            "stopped_early": outcome.stopped_early,
            "checkpoint_uri": outcome.checkpoint_uri,
            "reference_profile": registered["reference_profile"],
        }
        mlflow.set_tags(
            {
                RESULT_TAG: json.dumps(result_json, default=str)[:7900],
                "loopline.model_version": registered["model_version"],
            }
        )
    return result_json


def _system_metrics_available() -> bool:
    """MLflow's system metrics (CPU, memory, GPU via NVML) need psutil."""
    try:
        import psutil  # noqa: F401
    except ImportError:
        return False
    return True


def _log_params(client, run_id: str, cfg: LifecycleConfig, *, resumed: bool) -> None:
    """The resolved config, whole. A resumed run keeps its params (MLflow refuses changed values)."""
    from mlflow.entities import Param

    flat = config_to_flat_params(cfg)
    if resumed:
        existing = client.get_run(run_id).data.params
        flat = {k: v for k, v in flat.items() if k not in existing}
    items = [Param(k, v) for k, v in sorted(flat.items())]
    for start in range(0, len(items), 100):  # MLflow's log_batch takes at most 100 params
        client.log_batch(run_id, params=items[start : start + 100])


def _log_summary(outcome: TrainOutcome, gpu: dict[str, Any] | None) -> None:
    import mlflow

    metrics = {f"final_{k}": v for k, v in outcome.val_metrics.items()}
    metrics.update(
        {
            "train_samples_per_s": outcome.samples_per_s,
            "train_seconds": outcome.seconds,
            "resumed_from_step": outcome.resumed_from_step,
            "steps": outcome.steps,
        }
    )
    if outcome.checkpoint_seconds_last is not None:
        metrics["checkpoint_write_seconds"] = outcome.checkpoint_seconds_last
    if gpu:
        for key in ("mean_utilization_percent", "peak_memory_gib", "energy_kwh", "gpu_hours", "cost_usd"):
            if gpu.get(key) is not None:
                metrics[f"gpu_{key}"] = gpu[key]
        mlflow.log_dict(gpu, "gpu_summary.json")
    mlflow.log_metrics(
        {k: float(v) for k, v in metrics.items() if v is not None and v == v}, step=outcome.steps
    )
    mlflow.set_tags({"loopline.state_sha256": outcome.state_sha256, "training.precision": outcome.precision})


def _register(
    cfg: LifecycleConfig,
    lake: Lake,
    inputs: TrainingInputs,
    outcome: TrainOutcome,
    *,
    model_name: str,
    run_key: str,
    code: str,
) -> dict[str, Any]:
    """Write the bundle, check it loads and scores, profile the reference data, log + register it."""
    import mlflow

    from loopline.features import load_transform
    from loopline.packaging.bundle import BundleMeta, load_predictor, write_bundle
    from loopline.packaging.registry import log_and_register_bundle

    contract = inputs.contract
    with tempfile.TemporaryDirectory(prefix="loopline-bundle-") as tmp:
        bundle_dir = Path(tmp) / "bundle"
        meta = BundleMeta(
            factory=cfg.training.model,
            input_dim=outcome.input_dim,
            output_dim=outcome.output_dim,
            task=contract.task,
            classes=contract.classes if contract.task != "regression" else None,
            model_config=cfg.training.model_dump(mode="json"),
            feature_names=inputs.feature_names,
            data_versions=inputs.data_versions,
            contract_hash=contract.hash,
            target_mean=outcome.target_mean,
            target_std=outcome.target_std,
            extra={
                "run_key": run_key,
                "code_version": code,
                "state_sha256": outcome.state_sha256,
                "steps": outcome.steps,
            },
        )
        transform = load_transform(lake, contract.dataset, inputs.transform_version)
        write_bundle(bundle_dir, outcome.state_dict, meta, transform, contract)
        predictor = load_predictor(bundle_dir)  # the bundle must load before it is registered
        raw = read_raw_rows(
            lake,
            contract,
            inputs.clean_version,
            limit=REFERENCE_PROFILE_ROWS,
            split_fractions=cfg.features.split_fractions,
        )
        example = example_rows(raw, contract)
        profile_status = _write_reference_profile(cfg, predictor, raw, bundle_dir)
        if profile_status == "written":
            mlflow.log_artifact(str(bundle_dir / "reference_profile.json"))
        started = time.perf_counter()
        registered = log_and_register_bundle(
            str(bundle_dir),
            model_name=model_name,
            contract=contract,
            input_example=example,
            predictions=predictor.predict(example),
        )
        log.info("registered %s in %.1f s", registered["model_uri"], time.perf_counter() - started)
    return {**registered, "reference_profile": profile_status}


def _write_reference_profile(cfg: LifecycleConfig, predictor, raw, bundle_dir: Path) -> str:
    """The drift reference profile: raw train rows and their predictions, stored beside the bundle."""
    from loopline.monitoring.profile import build_reference_profile, save_profile

    if raw is None or not len(raw):
        log.info("no raw clean rows readable: no reference profile written")
        return "skipped: no raw rows"
    contract = predictor.contract
    numeric = [c for c in contract.feature_columns if contract.columns[c].type in ("int", "float")]
    categorical = [c for c in contract.feature_columns if contract.columns[c].type in ("category", "bool")]
    try:
        profile = build_reference_profile(
            raw, numeric, categorical, predictor.predict(raw), bins=cfg.drift.bins
        )
        save_profile(profile, bundle_dir / "reference_profile.json")
    except Exception as exc:  # drift is a later stage: a profile problem must not lose a trained model
        log.warning("reference profile failed: %s", exc)
        return f"failed: {exc}"
    return "written"
