"""The job variables a training run hands to the `gpu` work pool: how many GPUs, and which kind.

The config says what a training needs (`training.devices` processes, on whole GPUs or on a MIG slice
`training.mig_profile`); the pool's base job template (infra/work-pools/*.json) says how its workers ask
for it. `training_job_variables` states the need; `pool_job_variables` maps it onto the variables one pool
declares and passes nothing else. The Prefect server accepts undeclared job variables and the worker
ignores them without a word, so passing only declared ones keeps a flow run's recorded job variables
true to what its pod got (a process pool declares none of them, so it gets none), while the server still
checks the declared ones against the pool's schema (a wrong type is a 422 when the run is created).

How each template asks for GPUs:
- kubernetes-gpu.json and docker-gpu.json: an integer `gpu_limit` (nvidia.com/gpu, `--gpus N`).
- kubernetes-gpu-mig.json: an object `resource_limits` holding `nvidia.com/mig-<profile>: N`. Prefect fills
  placeholders in values, never in keys, so the resource name cannot be a variable of its own: the entry
  is merged into the pool's default limits (its memory limit stays).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from loopline.config import TrainingConfig
from loopline.errors import ConfigError

GPU_RESOURCE = "nvidia.com/gpu"
MIG_RESOURCE_PREFIX = "nvidia.com/mig-"
GPU_LIMIT = "gpu_limit"  # integer variable of kubernetes-gpu.json and docker-gpu.json
RESOURCE_LIMITS = "resource_limits"  # object variable of kubernetes-gpu-mig.json


def training_job_variables(training: TrainingConfig) -> dict[str, Any]:
    """What the flow-run pod of a training needs: `gpu_limit` (= training.devices, one torchrun process
    per GPU; 0 for a CPU training, and 0 when training.launcher starts the nodes as pods of their own, which
    ask for their GPUs themselves) and `gpu_resource` (nvidia.com/gpu, or nvidia.com/mig-<profile>)."""
    if training.mig_profile and training.devices > 1:
        raise ConfigError(
            f"training.mig_profile={training.mig_profile!r} with training.devices={training.devices}: a CUDA "
            f"process sees a single MIG slice and NCCL does not run across slices, so a MIG training has one "
            f"process. Set training.devices=1, or train on whole GPUs (training.mig_profile=null)."
        )
    trains_here = training.device != "cpu" and training.launcher == "local"
    gpus = training.devices if trains_here else 0
    resource = f"{MIG_RESOURCE_PREFIX}{training.mig_profile}" if training.mig_profile else GPU_RESOURCE
    return {GPU_LIMIT: gpus, "gpu_resource": resource}


def pool_job_variables(
    wanted: Mapping[str, Any], declared: Mapping[str, Any], pool: str = "gpu"
) -> dict[str, Any]:
    """`wanted` (from training_job_variables) mapped onto the variables a pool declares (`declared`: its
    base job template's `variables.properties`). Keys the pool declares pass as they are; a pool with
    `resource_limits` gets the GPU resource merged into that object's default; a MIG slice on a pool that
    can only count whole GPUs is a ConfigError (it would get whole GPUs instead, silently)."""
    out = {key: value for key, value in wanted.items() if key in declared}
    resource = wanted.get("gpu_resource")
    if resource is None:
        return out
    if RESOURCE_LIMITS in declared:
        defaults = declared[RESOURCE_LIMITS].get("default") or {}
        kept = {k: v for k, v in defaults.items() if not is_gpu_resource(k)}
        count = wanted.get(GPU_LIMIT, 1)
        out[RESOURCE_LIMITS] = {**kept, resource: count} if count else kept
    elif resource != GPU_RESOURCE and GPU_LIMIT in declared:
        raise ConfigError(
            f"training.mig_profile asks for {resource}, but work pool {pool!r} can only ask for whole GPUs "
            f"({GPU_RESOURCE}, variable {GPU_LIMIT!r}). Create the pool from "
            f"infra/work-pools/kubernetes-gpu-mig.json (`loopline up --pool-type kubernetes-mig`, or "
            f"`prefect work-pool update {pool} --base-job-template infra/work-pools/kubernetes-gpu-mig.json`), "
            f"or set training.mig_profile=null."
        )
    return out


def is_gpu_resource(name: str) -> bool:
    """nvidia.com/gpu or a MIG slice nvidia.com/mig-*."""
    return name == GPU_RESOURCE or name.startswith(MIG_RESOURCE_PREFIX)
