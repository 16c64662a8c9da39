"""Bootstrap against the running Prefect API: the work pools `cpu` and `gpu`, the global concurrency
limit `gpu`, the block types of `blocks`, and the deployments of prefect.yaml. Each step is idempotent,
so `up` on a database that already has them keeps what is there."""

from __future__ import annotations

import json
from contextlib import contextmanager
from typing import Any

from flows.stack.state import PROJECT_DIR

WORK_POOLS = ("cpu", "gpu")


@contextmanager
def prefect_client(api_url: str):
    """A sync Prefect client bound to `api_url` (this process may be configured for another API)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        with get_client(sync_client=True) as client:
            yield client


def create_work_pools(api_url: str) -> list[str]:
    """Process-type pools `cpu` and `gpu` (an existing pool is kept as it is)."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    template = process_job_template()
    with prefect_client(api_url) as client:
        for name in WORK_POOLS:
            try:
                client.create_work_pool(WorkPoolCreate(name=name, type="process", base_job_template=template))
            except ObjectAlreadyExists:
                pass
    return list(WORK_POOLS)


def process_job_template() -> dict[str, Any] | None:
    """infra/work-pools/process.json, the base job template of both pools (None: Prefect's default)."""
    path = PROJECT_DIR / "infra" / "work-pools" / "process.json"
    return json.loads(path.read_text()) if path.exists() else None


def create_concurrency_limits(api_url: str) -> dict[str, int]:
    """The global concurrency limit `gpu`: one slot per visible GPU, at least 1 (a CPU-only host
    still serialises training jobs on its one "accelerator"). Training takes it with
    `prefect.concurrency.sync.concurrency("gpu", occupy=k)`."""
    from tasks.common import ensure_global_limit

    slots = max(count_gpus(), 1)
    with prefect_client(api_url) as client:
        ensure_global_limit(client, "gpu", slots, update=True)
    return {"gpu": slots}


def count_gpus() -> int:
    try:
        from loopline.train.gpu import read_samples

        return len({s.uuid for s in read_samples()})
    except Exception:  # no NVML (no driver, no GPU): zero GPUs
        return 0


def register_blocks(api_url: str) -> list[str]:
    """What `prefect block register -m blocks` does: every Block type in `blocks` shows in the UI's
    catalogue (in-process: a CLI subprocess would pay Prefect's import again)."""
    from prefect.blocks.core import Block
    from prefect.settings import PREFECT_API_URL, temporary_settings

    import blocks

    types = [obj for obj in vars(blocks).values() if isinstance(obj, type) and issubclass(obj, Block)]
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        for block_type in types:
            block_type.register_type_and_schema()
    return sorted(t.get_block_type_slug() for t in types)


def deploy_all(env: dict[str, str], config_path: str | None, warm=None) -> list[str]:
    """`prefect deploy --all` of prefect.yaml (flows/project.py; `warm`: that deploy started ahead by
    `start_deploy`); then the retrain trigger's `within` follows retrain.cooldown_hours, so a burst of drift
    events starts one run."""
    from flows.project import deploy_project
    from loopline.config import load_config

    cooldown_seconds = load_config(config_path).retrain.cooldown_hours * 3600
    return deploy_project(
        env, trigger_within_seconds={"loopline.drift.detected": cooldown_seconds}, warm=warm
    )
