"""Deployment flow: after a promotion, the running server(s) pick up the new champion, confirmed through
/version; if the new version does not come up healthy, @champion rolls back and the servers follow."""

from __future__ import annotations

from typing import Any

from prefect import flow

from loopline.config import LifecycleConfig, resolve_config
from loopline.packaging.registry import model_name_for
from tasks.deployment import find_servers, read_champion, report, start_server, swap_champion


@flow(name="deployment", log_prints=True)
def deployment_flow(
    config: LifecycleConfig | None = None, model: str | None = None, start_if_missing: bool = True
) -> dict[str, Any]:
    cfg = resolve_config(config)
    model = model or model_name_for(cfg)
    version = read_champion(cfg, model)
    # Find: the servers that serve this model (start one when none runs)
    servers = find_servers(cfg, model)
    started = False
    if not servers and start_if_missing:
        servers, started = [start_server(cfg, model)], True
    # Swap: reload each server and confirm it serves the champion
    swaps = [swap_champion(cfg, server, version) for server in servers]
    result: dict[str, Any] = {
        "model": model,
        "version": version,
        "servers": swaps,
        "started": started,
        "deployed": bool(swaps),
    }
    # Decide: anything unhealthy rolls the champion back, and the servers follow it
    if any(not s["healthy"] for s in swaps):
        from flows.promotion import rollback_flow

        result["rolled_back"] = rollback_flow(model, cfg, reason=f"v{version} did not come up healthy")
        result["deployed"] = False
        back = result["rolled_back"]["champion_version"]
        result["servers_after_rollback"] = [swap_champion(cfg, server, back) for server in servers]
    report(model, result)
    return result
