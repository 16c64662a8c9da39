"""Training that never loses work: the loop (`loop`, shared by one process and DDP), exact
checkpoint/resume (`checkpoint`, `state`), preemption, DDP (`ddp`, `worker`), MLflow tracking, the
built-in models and GPU telemetry (`gpu`). `run_training` ties them together and registers the model
through packaging. Imports storage, data, features, packaging and monitoring (the reference profile).
Light to import: torch and mlflow load when first used."""

from loopline._exports import lazy_exports

_EXPORTS = {
    "run_training": "run",
    "PREEMPTED_EXIT_CODE": "preemption",
    "Preempted": "preemption",
    "PreemptionWatch": "preemption",
    "process_is_terminating": "preemption",
    "code_version": "runkey",
    "compute_run_key": "runkey",
    "CheckpointStore": "checkpoint",
    "train_loop": "loop",
    "mlp": "models",
    "linear": "models",
    "GpuSampler": "gpu",
    "read_samples": "gpu",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
