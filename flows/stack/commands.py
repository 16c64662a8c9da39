"""What each stack process runs: the command lines of the Prefect server, the MLflow server and the
process workers, and the environment each one gets (the workers' is what every flow run they start sees)."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

from flows.stack.state import PROJECT_DIR
from flows.stack.urls import HOST, asyncpg_url, mlflow_artifact_root, mlflow_backend_store_uri
from loopline.data.allocator import allocator_env

# Process workers poll the API for scheduled runs; Prefect's default (10 s) makes an event-triggered
# retrain wait that long before it starts.
DEFAULT_WORKER_POLL_SECONDS = 5.0


# Prefect's and MLflow's own CLIs, without the integration collections and MLflow's waiting parent process
# (flows/stack/launch.py says why and what is kept)
LAUNCH = [sys.executable, "-m", "flows.stack.launch"]


def prefect_server_cmd(port: int) -> list[str]:
    return [*LAUNCH, "prefect", "server", "start", "--host", HOST, "--port", str(port)]


def mlflow_server_cmd(root: Path, port: int) -> list[str]:
    # one uvicorn worker: a local platform's few clients do not need MLflow's default of four processes
    return [
        *LAUNCH, "mlflow", "server",
        "--backend-store-uri", mlflow_backend_store_uri(root),
        "--default-artifact-root", mlflow_artifact_root(root),
        "--host", HOST, "--port", str(port), "--workers", "1",
    ]  # fmt: skip


def worker_cmd(pool: str) -> list[str]:
    """`prefect worker start` for one pool (what a user runs by hand; `up` runs `workers_cmd`)."""
    return [
        *LAUNCH,
        "prefect",
        "worker",
        "start",
        "--pool",
        pool,
        "--type",
        "process",
        "--name",
        worker_name(pool),
    ]


def workers_cmd(pools: tuple[str, ...] | list[str]) -> list[str]:
    """One process with a Prefect process worker per pool (flows/stack/launch.py `workers`)."""
    return [*LAUNCH, "workers", *(f"{pool}={worker_name(pool)}" for pool in pools)]


def worker_name(pool: str) -> str:
    return f"loopline-{pool}-{socket.gethostname()}"


def base_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_")}
    env.update(
        PREFECT_HOME=str(root / "prefect"),
        LOOPLINE_HOME=str(root),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        MLFLOW_ENABLE_TELEMETRY="false",
        GX_ANALYTICS_ENABLED="false",
    )
    return env


def mlflow_env(root: Path) -> dict[str, str]:
    env = base_env(root)
    # MLflow's job runner (about ten huey consumer processes, ~2.7 GB RSS) serves features loopline does not
    # use (GenAI judges and scorers, prompt optimisation, trace rollups); off unless the user turned it on
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    return env


def server_env(root: Path, postgres_url: str | None, port: int) -> dict[str, str]:
    env = base_env(root)
    # the UI's own API address: Prefect derives it from PREFECT_SERVER_API_PORT, not from --port, so a
    # server on a free port other than 4200 would serve a UI that calls 4200 ("Can't connect to Server API")
    env["PREFECT_SERVER_API_PORT"] = str(port)
    env["PREFECT_UI_API_URL"] = f"http://{HOST}:{port}/api"
    env.pop("PREFECT_SERVER_DATABASE_CONNECTION_URL", None)
    env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
    if postgres_url:  # env only: never on a command line, where `ps` shows the password
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = asyncpg_url(postgres_url)
    # concurrency-limit leases on disk (under PREFECT_HOME), not in the server's memory: a run holding a slot
    # (lake-<D>, gpu, promote-<M>) across a server restart can still release it. With the default in-memory
    # storage the restart forgot the lease, the slot stayed taken, and the next run waited for it until its
    # timeout (seen as `loopline run` hanging after a restart).
    env.setdefault(
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE", "prefect.server.concurrency.lease_storage.filesystem"
    )
    return env


def client_env(
    root: Path, state: dict[str, Any], config_path: str | None, poll_seconds: float
) -> dict[str, str]:
    """What the CLI helpers and the workers (and so every flow run they start) see."""
    env = base_env(root)
    env.update(
        PREFECT_API_URL=state["prefect_api_url"],
        MLFLOW_TRACKING_URI=state["mlflow_tracking_uri"],
        LOOPLINE_PROJECT_DIR=str(PROJECT_DIR),
        PREFECT_WORKER_QUERY_SECONDS=str(poll_seconds),
        PREFECT_WORKER_PREFETCH_SECONDS=str(max(poll_seconds, 1.0)),
        # results of deployment runs go to $LOOPLINE_HOME/prefect/storage, so a parent flow can read
        # the result of a child it started on another pool (retrain -> train)
        PREFECT_RESULTS_PERSIST_BY_DEFAULT="true",
        PREFECT_LOCAL_STORAGE_PATH=str(root / "prefect" / "storage"),
        PYTHONPATH=os.pathsep.join(p for p in (str(PROJECT_DIR), os.environ.get("PYTHONPATH")) if p),
    )
    env.update(allocator_env(env))  # what every flow run should start with (loopline.data.allocator)
    env.setdefault("LOOPLINE_LANDING", str(root / "landing"))
    if config_path:
        env["LOOPLINE_CONFIG"] = config_path
    return env
