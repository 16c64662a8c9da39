"""Deploy prefect.yaml with Prefect's own `prefect deploy`, plus the one thing it cannot do.

`prefect deploy --all` is what users run, so `loopline up` runs exactly that (in the project directory, with the
stack's environment: `{{ $LOOPLINE_PROJECT_DIR }}` and `{{ $LOOPLINE_LANDING }}` resolve from it). It used to die
on a 422 from `/work_pools/{pool}/workers/filter` with fastapi >= 0.151 (the client sends `"limit": null`, which
those versions refuse); pyproject pins fastapi below that.

The step `prefect deploy` cannot do: a trigger's `within` from the loopline config (the retrain trigger's
cooldown, `retrain.cooldown_hours`). prefect.yaml carries the default; `apply_trigger_windows` moves it after
the deploy, on the automation `prefect deploy` created for that deployment.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from loopline.errors import ConfigError

PROJECT_DIR = Path(__file__).resolve().parent.parent
DEPLOY_TIMEOUT_SECONDS = 600


def load_project(prefect_file: Path | None = None) -> dict[str, Any]:
    return yaml.safe_load((prefect_file or PROJECT_DIR / "prefect.yaml").read_text())


def deploy_args(prefect_file: Path, only: list[str] | None = None) -> list[str]:
    """`prefect`'s arguments: `--no-prompt deploy --prefect-file F --all` (or `-n NAME` for each of `only`)."""
    which = ["--all"] if only is None else [arg for n in only for arg in ("-n", n)]
    return ["--no-prompt", "deploy", "--prefect-file", str(prefect_file), *which]


def start_deploy(env: dict[str, str], prefect_file: Path | None = None) -> subprocess.Popen:
    """`prefect deploy --all`, started ahead: it imports Prefect's CLI and the flows' modules, then waits for
    `deploy_project(..., warm=it)` to tell it to go (flows/stack/launch.py `deploy_on_go`). Closing its
    stdin without a word (or killing it) ends it without deploying."""
    prefect_file = prefect_file or PROJECT_DIR / "prefect.yaml"
    cmd = [
        sys.executable,
        "-m",
        "flows.stack.launch",
        "deploy-on-go",
        str(prefect_file),
        *deploy_args(prefect_file),
    ]
    return subprocess.Popen(
        cmd,
        cwd=PROJECT_DIR,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def deploy_project(
    env: dict[str, str],
    *,
    prefect_file: Path | None = None,
    only: list[str] | None = None,
    trigger_within_seconds: dict[str, float] | None = None,
    warm: subprocess.Popen | None = None,
) -> list[str]:
    """`prefect --no-prompt deploy --all` (or `-n NAME` for each of `only`) against env's PREFECT_API_URL, then
    the trigger windows; `warm`: that deploy, already started by `start_deploy` (then `only` must be None). Returns the deployed names as `flow/deployment`; ConfigError with Prefect's own
    message when the deploy fails."""
    prefect_file = prefect_file or PROJECT_DIR / "prefect.yaml"
    names = [d["name"] for d in load_project(prefect_file).get("deployments", [])]
    selected = names if only is None else [n for n in names if n in only]
    if warm is not None:  # started by start_deploy with the same arguments: tell it to go
        out, err = warm.communicate("go\n", timeout=DEPLOY_TIMEOUT_SECONDS)
        returncode = warm.returncode
    else:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "prefect",
                *deploy_args(prefect_file, selected if only is not None else None),
            ],
            cwd=PROJECT_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=DEPLOY_TIMEOUT_SECONDS,
        )
        out, err, returncode = done.stdout, done.stderr, done.returncode
    if returncode != 0:
        tail = "\n".join((out + err).strip().splitlines()[-15:])
        raise ConfigError(f"`prefect deploy` of {prefect_file} failed (exit {returncode}):\n{tail}")
    from flows.stack.bootstrap import prefect_client

    with prefect_client(env["PREFECT_API_URL"]) as client:
        deployed = [_full_name(client, n) for n in selected]
        if trigger_within_seconds:
            for name in deployed:
                apply_trigger_windows(client, name, trigger_within_seconds)
    return sorted(deployed)


def _full_name(client, name: str) -> str:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    (deployment,) = client.read_deployments(
        deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[name]))
    )
    flow = client.read_flow(deployment.flow_id)
    return f"{flow.name}/{deployment.name}"


def apply_trigger_windows(client, deployment_name: str, within: dict[str, float]) -> int:
    """Set `within` (seconds) on the deployment's event triggers that expect one of `within`'s events (e.g.
    {"loopline.drift.detected": cooldown}). Returns how many automations changed."""
    from prefect.events.schemas.automations import AutomationCore

    deployment = client.read_deployment_by_name(deployment_name)
    changed = 0
    for automation in client.read_resource_related_automations(f"prefect.deployment.{deployment.id}"):
        trigger = automation.trigger
        expected = set(getattr(trigger, "expect", None) or ())
        windows = {within[e] for e in expected if e in within}
        if not windows:
            continue
        seconds = max(windows)
        if trigger.within.total_seconds() == seconds:
            continue
        trigger.within = seconds
        # the update body is an automation without its owner (the server keeps the deployment as owner)
        body = AutomationCore(**automation.model_dump(include=set(AutomationCore.model_fields)))
        json = body.model_dump(mode="json", exclude={"owner_resource"})
        client.request("PUT", "/automations/{id}", path_params={"id": automation.id}, json=json)
        changed += 1
    return changed
