"""Deploy prefect.yaml through the Python client: what `prefect deploy --all` does, minus its traps.

Why not the CLI: with prefect 3.8.8 and fastapi 0.154, `prefect deploy` (and `Flow.deploy`) create the
first deployment and then die on a 422 from `/work_pools/{pool}/workers/filter` (the client sends
`"limit": null`, which that server refuses). So this module reads the same prefect.yaml and makes the
same API calls: flow, deployment (entrypoint, pool, parameters, pull steps, schedules, tags) and one
automation per trigger, owned by the deployment so a redeploy replaces them.

`{{ $ENV_VAR }}` placeholders resolve from the environment as the CLI resolves them; `{{ event.* }}`
templates in trigger parameters are left for the server to render when the trigger fires.
"""

from __future__ import annotations

import copy
import os
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

PROJECT_DIR = Path(__file__).resolve().parent.parent


def load_project(prefect_file: Path | None = None) -> dict[str, Any]:
    return yaml.safe_load((prefect_file or PROJECT_DIR / "prefect.yaml").read_text())


def deploy_project(
    client,
    *,
    env: dict[str, str] | None = None,
    prefect_file: Path | None = None,
    trigger_within_seconds: dict[str, float] | None = None,
    only: list[str] | None = None,
) -> list[str]:
    """Create or update every deployment of prefect.yaml.

    `trigger_within_seconds` overrides a trigger's `within` by the event it expects (e.g. the retrain
    cooldown from the config); `only` limits it to these deployment names. Returns the deployed names
    as `flow/deployment`.
    """
    from prefect.utilities.templating import apply_values

    spec = load_project(prefect_file)
    env = dict(os.environ if env is None else env)
    deployed = []
    for raw in spec.get("deployments", []):
        if only is not None and raw["name"] not in only:
            continue
        triggers = copy.deepcopy(raw.get("triggers") or [])  # event templates stay for the server
        with _environ(env):  # prefect resolves `{{ $VAR }}` from os.environ only
            conf = apply_values({k: v for k, v in raw.items() if k != "triggers"}, {}, remove_notset=False)
            pull = apply_values(conf.get("pull", spec.get("pull")) or [], {}, remove_notset=False)
        deployment_id, flow_name = _create_deployment(client, conf, pull)
        _replace_triggers(client, deployment_id, conf["name"], triggers, trigger_within_seconds or {})
        deployed.append(f"{flow_name}/{conf['name']}")
    return sorted(deployed)


@contextmanager
def _environ(env: dict[str, str]):
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _create_deployment(client, conf: dict[str, Any], pull: list[dict[str, Any]]):
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema

    cwd = Path.cwd()
    os.chdir(PROJECT_DIR)  # entrypoints are relative to the project, as for `prefect deploy`
    try:
        flow = load_flow_from_entrypoint(conf["entrypoint"])
    finally:
        os.chdir(cwd)
    flow_id = client.create_flow_from_name(flow.name)
    schedules = [
        DeploymentScheduleCreate(
            schedule=_schedule(s), active=s.get("active", True), parameters=s.get("parameters", {})
        )
        for s in conf.get("schedules") or []
    ]
    deployment_id = client.create_deployment(
        flow_id=flow_id,
        name=conf["name"],
        description=conf.get("description") or flow.description,
        entrypoint=conf["entrypoint"],
        work_pool_name=(conf.get("work_pool") or {}).get("name"),
        work_queue_name=(conf.get("work_pool") or {}).get("work_queue_name"),
        job_variables=(conf.get("work_pool") or {}).get("job_variables") or {},
        parameters=conf.get("parameters") or {},
        parameter_openapi_schema=parameter_schema(flow).model_dump_for_openapi(),
        enforce_parameter_schema=conf.get("enforce_parameter_schema", True),
        pull_steps=pull,
        schedules=schedules,
        tags=conf.get("tags") or [],
        concurrency_limit=conf.get("concurrency_limit"),
        version=conf.get("version"),
    )
    return deployment_id, flow.name


def _schedule(conf: dict[str, Any]):
    from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule

    if conf.get("cron"):
        return CronSchedule(cron=conf["cron"], timezone=conf.get("timezone"), day_or=conf.get("day_or", True))
    if conf.get("interval"):
        kwargs = {"interval": timedelta(seconds=float(conf["interval"])), "timezone": conf.get("timezone")}
        if conf.get("anchor_date"):
            kwargs["anchor_date"] = conf["anchor_date"]
        return IntervalSchedule(**kwargs)
    raise ValueError(f"schedule {conf!r}: only `cron` and `interval` schedules are supported here")


def _replace_triggers(client, deployment_id, name: str, specs: list[dict], within: dict[str, float]) -> None:
    from prefect.events import DeploymentTriggerTypes
    from pydantic import TypeAdapter

    client.delete_resource_owned_automations(f"prefect.deployment.{deployment_id}")
    adapter = TypeAdapter(DeploymentTriggerTypes)
    for i, spec in enumerate(specs, start=1):
        spec.setdefault("name", f"{name}__automation_{i}")
        for event in spec.get("expect") or []:
            if event in within:
                spec["within"] = within[event]
        trigger = adapter.validate_python(spec)
        trigger.set_deployment_id(deployment_id)
        client.create_automation(trigger.as_automation())
