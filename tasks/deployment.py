"""Deployment tasks: put the new champion into service on every known server, or roll back."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact

from blocks.lake import lake_environment
from loopline.config import LifecycleConfig
from loopline.release import deploy as core
from tasks.common import lake_for, retry_unless_user_error, run_logger


def _tracking_uri(cfg: LifecycleConfig) -> str:
    from loopline.packaging.registry import tracking_uri_for

    return tracking_uri_for(cfg, None)


@task(name="read-champion", retries=2, retry_delay_seconds=[2, 5])  # the registry may be briefly busy
def read_champion(cfg: LifecycleConfig, model: str) -> int:
    from tasks.stage_cache import champion_alias

    found = champion_alias(_tracking_uri(cfg), model)  # a query or one REST call, no mlflow import
    if found is not False and found is not None:
        return found
    return core.champion_version(_tracking_uri(cfg), model)  # no champion: its error names the model


@task(name="read-previous-champion", retries=2, retry_delay_seconds=[2, 5])
def previous_champion(cfg: LifecycleConfig, model: str) -> int | None:
    return core.previous_champion(_tracking_uri(cfg), model)


@task(name="find-model-servers")
def find_servers(cfg: LifecycleConfig, model: str) -> list[dict]:
    return [s.__dict__ for s in core.known_servers(cfg.home, model)]


# a port race on start is worth one retry; a port already taken (a ConfigError) is not
@task(name="start-model-server", retries=1, retry_delay_seconds=5, retry_condition_fn=retry_unless_user_error)
def start_server(cfg: LifecycleConfig, model: str) -> dict:
    # the server's inference log goes to the lake this flow resolved (the LakeStorage block, or the env)
    env = lake_environment(lake_for(cfg))
    server = core.start_server(cfg.home, model, cfg.serving, tracking_uri=_tracking_uri(cfg), env=env)
    run_logger().info("started the model server for %s at %s (pid %s)", model, server.url, server.pid)
    return server.__dict__


@task(name="swap-champion")
def swap_champion(cfg: LifecycleConfig, server: dict, version: int) -> dict[str, Any]:
    """Reload, then confirm /version shows `version` within the timeout. Failures are returned, not raised."""
    srv = core.Server(**server)
    try:
        core.reload(srv, core.reload_token(cfg.home))
        info = core.confirm_version(srv, version, cfg.serving.confirm_timeout_seconds)
        return {"url": srv.url, "healthy": True, "version": info.get("version")}
    except Exception as exc:  # any failure to come up healthy means: roll back
        return {"url": srv.url, "healthy": False, "error": f"{type(exc).__name__}: {exc}"}


@task(name="stop-model-server")
def stop_server(cfg: LifecycleConfig, server: dict) -> None:
    core.stop_server(cfg.home, core.Server(**server))


def report(model: str, result: dict[str, Any]) -> None:
    lines = [f"# Deployment of `{model}` v{result['version']}", ""]
    for s in result["servers"]:
        lines.append(
            f"- {s['url']}: {'serving v' + str(s.get('version')) if s['healthy'] else 'FAILED: ' + s['error']}"
        )
    if result.get("rolled_back"):
        lines += ["", f"Rolled back to v{result['rolled_back']['champion_version']}."]
    create_markdown_artifact(key=f"deployment-{model}".lower().replace("_", "-"), markdown="\n".join(lines))
