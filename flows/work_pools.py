"""The work pools `cpu` and `gpu` with their base job templates from infra/work-pools/, for one kind of
worker: `process` (what `loopline up` runs on this host), `kubernetes`, `kubernetes-mig` (the gpu pool on
MIG slices) or `docker`. Idempotent: a pool that exists gets the template again (so an edited template
reaches the server on the next `up`); a pool of another type is an error, since Prefect cannot change a
pool's type in place.

The same, by hand (infra/work-pools/README.md):
    prefect work-pool create gpu --type kubernetes --base-job-template infra/work-pools/kubernetes-gpu.json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loopline.errors import ConfigError

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "infra" / "work-pools"

# pool type -> (Prefect worker type, template of the cpu pool, template of the gpu pool)
POOL_TYPES: dict[str, tuple[str, str, str]] = {
    "process": ("process", "process.json", "process.json"),
    "kubernetes": ("kubernetes", "kubernetes-cpu.json", "kubernetes-gpu.json"),
    "kubernetes-mig": ("kubernetes", "kubernetes-cpu.json", "kubernetes-gpu-mig.json"),
    "docker": ("docker", "docker.json", "docker-gpu.json"),
}


def apply_work_pools(client, pool_type: str, names: tuple[str, str] = ("cpu", "gpu")) -> list[str]:
    """Create or update the pools `names` (cpu, gpu) as `pool_type` pools with their templates, through
    the sync Prefect `client`. Returns the pool names."""
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectAlreadyExists

    worker_type, *files = pool_templates(pool_type)
    for name, file in zip(names, files, strict=True):
        template = load_template(file)
        try:
            client.create_work_pool(WorkPoolCreate(name=name, type=worker_type, base_job_template=template))
            continue
        except ObjectAlreadyExists:
            pass
        pool = client.read_work_pool(name)
        if pool.type != worker_type:
            raise ConfigError(
                f"work pool {name!r} exists with type {pool.type!r}, not {worker_type!r} (--pool-type "
                f"{pool_type}); Prefect cannot change a pool's type. Delete it first (`prefect work-pool delete "
                f"{name}`; its deployments stay and are picked up by the new pool), or keep --pool-type "
                f"{pool.type}."
            )
        if pool.base_job_template != template:
            client.update_work_pool(name, WorkPoolUpdate(base_job_template=template))
    return list(names)


def pool_templates(pool_type: str) -> tuple[str, str, str]:
    try:
        return POOL_TYPES[pool_type]
    except KeyError:
        raise ConfigError(f"unknown pool type {pool_type!r}: choose one of {', '.join(POOL_TYPES)}") from None


def load_template(file: str) -> dict[str, Any]:
    """infra/work-pools/<file>, a Prefect base job template (`job_configuration` + `variables`)."""
    return json.loads((TEMPLATES_DIR / file).read_text())
