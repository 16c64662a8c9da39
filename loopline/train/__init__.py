"""Training that never loses work: exact checkpoint/resume, preemption, DDP, MLflow tracking.

Light to import: `run_training` and the loop load torch and mlflow only when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from loopline.train.preemption import PREEMPTED_EXIT_CODE, Preempted, process_is_terminating
from loopline.train.runkey import code_version, compute_run_key

if TYPE_CHECKING:
    from loopline.train.run import run_training

__all__ = [
    "PREEMPTED_EXIT_CODE",
    "Preempted",
    "code_version",
    "compute_run_key",
    "process_is_terminating",
    "run_training",
]


def __getattr__(name: str) -> Any:
    if name == "run_training":
        from loopline.train.run import run_training

        return run_training
    raise AttributeError(f"module 'loopline.train' has no attribute {name!r}")
