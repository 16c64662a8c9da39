"""The training task: a GPU slot, progress in the Prefect UI, retries that resume, an event at the end.

Retries resume instead of restarting: every attempt has the same run key, so it continues from the
latest checkpoint. Not retried in the same process: the user's mistakes (a bad config, a missing
dataset) and a preemption by SIGTERM (the process is about to die; the next flow run resumes).
A spot notice without SIGTERM is retried: the retry sees the notice again and stops at once, unless
the notice was withdrawn.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any

from prefect import task

from loopline.config import LifecycleConfig
from tasks import stage_cache
from tasks.common import emit, ensure_global_limit, hold_slots, lake_for, run_logger, slug
from tasks.progress import report as report_progress

PROGRESS_UPDATE_SECONDS = 2.0  # one API call per update: often enough for a human, cheap for the server


def retry_training(task, task_run, state) -> bool:
    """Crashes, OOMs and I/O errors: retry (it resumes). User errors and SIGTERM: do not."""
    from loopline.errors import LooplineError
    from loopline.train import Preempted, process_is_terminating

    try:
        state.result()
    except Preempted:
        return not process_is_terminating()
    except LooplineError:
        return False
    except BaseException:
        return True
    return False


def needs_gpu_slot(cfg: LifecycleConfig) -> bool:
    """GPU runs take the slot; CPU runs only when `training.gpu_slot_on_cpu`. No torch import here."""
    tcfg = cfg.training
    if not tcfg.gpu_slot:
        return False
    if tcfg.gpu_slot_on_cpu or tcfg.device == "cuda":
        return True
    if tcfg.device == "cpu":
        return False
    from loopline.train.gpu import read_samples

    return bool(read_samples())


def ensure_concurrency_limit(name: str, occupy: int) -> int:
    """The global concurrency limit `name`, created when missing with one slot per GPU on this host
    (at least `occupy`, so the first run cannot deadlock on its own request). Returns its slot count."""
    from prefect import get_client

    from loopline.errors import ConfigError
    from loopline.train.gpu import read_samples

    with get_client(sync_client=True) as client:
        slots = ensure_global_limit(client, name, max(len(read_samples()), occupy, 1))
    if slots < occupy:
        raise ConfigError(
            f"training.nodes x training.devices is {occupy} but the Prefect global concurrency limit "
            f"{name!r} has only "
            f"{slots} slot(s): raise it (`prefect gcl update {name} --limit {occupy}`) or use fewer devices"
        )
    return slots


@contextmanager
def gpu_slot(name: str | None, occupy: int, timeout_s: float):
    """Hold `occupy` slots of the global concurrency limit `name` (none when `name` is None), waiting at
    most `timeout_s` (training.gpu_slot_timeout_seconds) for them: WaitTimeoutError after that."""
    if not name:
        yield
        return
    ensure_concurrency_limit(name, occupy)
    run_logger().info(
        "waiting for %d slot(s) of concurrency limit %r (at most %g s)", occupy, name, timeout_s
    )
    with hold_slots(name, occupy, timeout_s, "training.gpu_slot_timeout_seconds", "train on a GPU"):
        yield


class ProgressArtifact:
    """A Prefect progress artifact updated at most every PROGRESS_UPDATE_SECONDS."""

    def __init__(self, key: str, description: str):
        from prefect.artifacts import create_progress_artifact

        self.description = description
        self.artifact_id = create_progress_artifact(progress=0.0, key=key, description=description)
        self._last = 0.0

    def update(self, payload: dict[str, Any], *, force: bool = False) -> None:
        from prefect.artifacts import update_progress_artifact

        now = time.monotonic()
        if not force and now - self._last < PROGRESS_UPDATE_SECONDS:
            return
        self._last = now
        total = max(1, int(payload.get("total_steps") or 1))
        step = int(payload.get("step") or 0)
        loss = payload.get("loss")
        text = f"{self.description}: step {step}/{total}" + (f", loss {loss:.4f}" if loss is not None else "")
        try:
            update_progress_artifact(
                self.artifact_id, progress=min(100.0, 100.0 * step / total), description=text
            )
        except Exception as exc:  # the UI's progress bar must never stop training
            run_logger().debug("progress update failed: %s", exc)


def artifact_key(model_name: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return "training-" + slug(model_name)


@task(
    name="train-model",
    retries=2,
    retry_delay_seconds=[5, 30],
    retry_condition_fn=retry_training,
    task_run_name="train {dataset}",
)
def train_model(
    cfg: LifecycleConfig,
    dataset: str,
    fresh: bool = False,
    model_name: str | None = None,
    features_version: int | None = None,
) -> dict:
    """Train on features/D, register a new version of model M (no alias), emit loopline.model.trained
    (`event_emitted` in the result: whether the Prefect API accepted it)."""
    from prefect.runtime import task_run

    from loopline.storage.names import check_name
    from loopline.train import run_training

    log = run_logger()
    model = model_name or cfg.model_name or dataset
    check_name(dataset, "dataset")  # before any wait: both become lake paths (features/D, checkpoints/M)
    check_name(model, "model")
    attempt = task_run.run_count or 1
    # --fresh applies to the first attempt only: a retry must resume what this run already did
    start_fresh = fresh and attempt <= 1
    # A run key this registry saw finish: its result, without torch, mlflow or the features (a record)
    key, hit = (None, None) if start_fresh else _recorded_run(cfg, dataset, model, features_version)
    if hit is not None:
        return stage_cache.cached(hit)
    if attempt > 1:
        log.info("attempt %d: resuming from the latest checkpoint of this run key", attempt)
    slot = cfg.training.gpu_slot if needs_gpu_slot(cfg) else None
    occupy = cfg.training.nodes * cfg.training.devices  # every GPU of the job, on every node
    with gpu_slot(slot, occupy, cfg.training.gpu_slot_timeout_seconds):
        progress = ProgressArtifact(artifact_key(model), f"training {model} on {dataset}")

        def on_progress(payload: dict[str, Any]) -> None:
            progress.update(payload)  # the Prefect UI
            report_progress("train", **{**payload, "model": model})  # a progress bar here (the CLI)

        result = run_training(
            cfg,
            dataset,
            lake=lake_for(cfg),
            model_name=model,
            fresh=start_fresh,
            features_version=features_version,
            on_progress=on_progress,
            gpu_slot_held=slot is not None,  # exported beside the run's progress (loopline.train.telemetry)
        )
        progress.update({"step": result["steps"], "total_steps": result["steps"]}, force=True)
        report_progress("train", model=model, step=result["steps"], total_steps=result["steps"], done=True)
    if result.get("role") == "follower":  # a node of rank > 0 (loopline.train.node): node 0 registers
        return result
    result = announce_trained(model, dataset, result)
    # a rerun of this run key finds it finished (run_training); the registry may be new since the lookup
    key = key or _record_key(cfg, dataset, model, features_version)
    if key and result.get("model_version"):
        again = {**result, "reused_run": True, "event_emitted": False}
        stage_cache.save(cfg, key, _record_state(cfg, dataset), again)
    return result


def training_recorded(cfg: LifecycleConfig, dataset: str, features_version: int | None) -> bool:
    """Whether train_model would return a recorded run for these inputs (read from metadata, no torch)."""
    return _recorded_run(cfg, dataset, cfg.model_name or dataset, features_version)[1] is not None


def _recorded_run(
    cfg: LifecycleConfig, dataset: str, model: str, features_version: int | None
) -> tuple[str | None, dict | None]:
    """(the record key or None, the recorded result of a run this registry saw finish, or None)."""
    key = _record_key(cfg, dataset, model, features_version)
    if not key:
        return None, None
    return key, stage_cache.load(cfg, key, _record_state(cfg, dataset))


def _record_key(cfg: LifecycleConfig, dataset: str, model: str, features_version: int | None) -> str | None:
    """The run key (loopline.train.runkey) and the registry: what decides that a run is already done.
    None without an explicit features version: which one "latest" is needs the table's data."""
    from loopline.packaging.registry import tracking_uri_for
    from loopline.train.runkey import code_version, compute_run_key

    if features_version is None:
        return None
    registry = stage_cache.tracking_identity(tracking_uri_for(cfg, None))
    if registry is None:
        return None
    run_key = compute_run_key(
        cfg.training,
        dataset=dataset,
        model_name=model,
        features_version=features_version,
        code=code_version(),
    )
    return stage_cache.key_of("train", run_key, registry, lake_for(cfg).root)


def _record_state(cfg: LifecycleConfig, dataset: str) -> list | None:
    """features/D's table id (a rebuilt table is another one); its version is in the run key."""
    try:
        lake = lake_for(cfg)
        (state,) = stage_cache.table_states(lake, [lake.table_uri("features", dataset)])
        return None if state is None else state[0]
    except Exception as exc:  # no record rather than a failed training
        run_logger().debug("no stage record for training: %s", exc)
        return None


def announce_trained(model: str, dataset: str, result: dict) -> dict:
    """Log the trained run and emit loopline.model.trained (`event_emitted` in the result: whether the
    Prefect API accepted it). Call it after the run key's result is registered: the event states a fact."""
    log = run_logger()
    log.info(
        "trained %s: %d steps (resumed from %d), %.0f samples/s on %s, state %s",
        result["model_uri"],
        result["steps"],
        result["resumed_from_step"],
        result["samples_per_s"],
        result["device"],
        result["state_sha256"][:12],
    )
    result["event_emitted"] = emit(
        "loopline.model.trained",
        f"loopline.model.{model}",
        {
            "model_name": model,
            "model_version": result["model_version"],
            "model_uri": result["model_uri"],
            "run_id": result["run_id"],
            "dataset": dataset,
            "features_version": result["features_version"],
            "steps": result["steps"],
            "resumed_from_step": result["resumed_from_step"],
            "state_sha256": result["state_sha256"],
        },
    )
    return result
