"""`loopline up --pool-type kubernetes|kubernetes-mig|docker`: bootstrap a Prefect server that runs elsewhere (in
the cluster, or the compose platform) instead of starting one here: the `cpu` and `gpu` pools with the
templates of infra/work-pools/, the `gpu` concurrency limit, loopline's block types and `prefect deploy --all`
of prefect.yaml. The workers run where the pools' jobs run (infra/k8s, infra/compose.yaml), not on this host.

Deployments pull the project from the image (`LOOPLINE_PROJECT_DIR`, /opt/loopline in the loopline image), so
that is what prefect.yaml's pull step records unless the environment says otherwise.
"""

from __future__ import annotations

import os
from typing import Any

from loopline.errors import ConfigError

IMAGE_PROJECT_DIR = "/opt/loopline"
IMAGE_HOME = "/var/lib/loopline"


def bootstrap_remote(pool_type: str, cooldown_hours: float, api_url: str | None = None) -> dict[str, Any]:
    from flows.project import deploy_project
    from flows.stack.bootstrap import create_concurrency_limits, prefect_client, register_blocks
    from flows.work_pools import apply_work_pools

    api_url = api_url or os.environ.get("PREFECT_API_URL")
    if not api_url:
        raise ConfigError(
            f"`loopline up --pool-type {pool_type}` sets up a Prefect server that runs elsewhere: set "
            "PREFECT_API_URL to it (e.g. http://127.0.0.1:4200/api through `kubectl port-forward svc/prefect 4200`)"
        )
    with prefect_client(api_url) as client:
        pools = apply_work_pools(client, pool_type)
    env = {
        **os.environ,
        "PREFECT_API_URL": api_url,
        "LOOPLINE_PROJECT_DIR": os.environ.get("LOOPLINE_PROJECT_DIR_IN_IMAGE", IMAGE_PROJECT_DIR),
    }
    env.setdefault("LOOPLINE_LANDING", f"{IMAGE_HOME}/landing")
    deployed = deploy_project(env, trigger_within_seconds={"loopline.drift.detected": cooldown_hours * 3600})
    return {
        "prefect_api_url": api_url,
        "pool_type": pool_type,
        "work_pools": pools,
        "concurrency_limits": create_concurrency_limits(api_url),
        "blocks": register_blocks(api_url),
        "deployments": deployed,
        "project_dir_in_image": env["LOOPLINE_PROJECT_DIR"],
    }
