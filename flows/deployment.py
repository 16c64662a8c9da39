"""Deployment flow: after a promotion, the running server(s) pick up the new champion, confirmed through
/version; if the new version does not come up healthy, @champion rolls back and the servers follow."""

from __future__ import annotations

from typing import Any

from prefect import flow

import flows.heartbeats  # noqa: F401  (flow runs end without waiting on their heartbeat thread)
from loopline.config import LifecycleConfig, resolve_config
from loopline.errors import ConfigError, ModelError
from loopline.packaging.registry import model_name_for
from tasks.deployment import (
    find_servers,
    previous_champion,
    read_champion,
    report,
    start_server,
    swap_champion,
)


@flow(name="deployment", log_prints=True)
def deployment_flow(
    config: LifecycleConfig | None = None, model: str | None = None, start_if_missing: bool = True
) -> dict[str, Any]:
    cfg = resolve_config(config)
    return deploy_stage(cfg, model or model_name_for(cfg), start_if_missing)


def deploy_stage(cfg: LifecycleConfig, model: str, start_if_missing: bool = True) -> dict[str, Any]:
    """The deployment flow's body: its tasks run in the caller's flow run (the lifecycle's, or its own)."""
    version = read_champion(cfg, model)
    # Find: the servers that serve this model (start one when none runs)
    servers = find_servers(cfg, model)
    started = False
    swaps: list[dict[str, Any]] = []
    if not servers and start_if_missing:
        start = start_server(cfg, model, return_state=True)
        if start.is_completed():
            servers, started = [start.result()], True
        elif isinstance(error := _exception(start), ConfigError):
            raise error  # the port is taken: the platform's problem, not the champion's
        else:  # a champion the server cannot load: decided below like an unhealthy swap
            url = f"http://{cfg.serving.host}:{cfg.serving.port}"
            swaps.append({"url": url, "healthy": False, "error": f"{type(error).__name__}: {error}"})
    # Swap: reload each server and confirm it serves the champion
    swaps += [swap_champion(cfg, server, version) for server in servers]
    result: dict[str, Any] = {
        "model": model,
        "version": version,
        "servers": swaps,
        "started": started,
        "deployed": bool(swaps),
    }
    # Decide: anything unhealthy rolls the champion back, and the servers follow it
    failed = [s for s in swaps if not s["healthy"]]
    if failed and previous_champion(cfg, model) is None:
        report(model, result | {"deployed": False})
        raise ModelError(
            f"v{version} of {model!r} did not come up healthy on {', '.join(s['url'] for s in failed)} "
            f"({failed[0]['error']}), and it is the first champion, so there is nothing to roll back to: "
            f"@champion stays on v{version}; fix the server (its log is under {cfg.home}/serving) and run "
            "the deployment again"
        )
    if failed:
        from flows.promotion import rollback_flow

        result["rolled_back"] = rollback_flow(model, cfg, reason=f"v{version} did not come up healthy")
        result["deployed"] = False
        back = result["rolled_back"]["champion_version"]
        if not servers and start_if_missing:  # the new champion never started: serve the one rolled back to
            servers, result["started"] = [start_server(cfg, model)], True
        result["servers_after_rollback"] = [swap_champion(cfg, server, back) for server in servers]
    report(model, result)
    return result


def _exception(state) -> BaseException:
    """The exception a failed task raised (its state re-raises it)."""
    try:
        state.result()
    except BaseException as exc:  # the task's own exception
        return exc
    return RuntimeError(state.message or "failed")
