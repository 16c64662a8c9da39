"""`loopline up` / `loopline down`: a real local stack under $LOOPLINE_HOME, and only that stack.

`up` starts `prefect server start` (SQLite under $LOOPLINE_HOME/prefect, or Postgres when given a URL)
and `mlflow server` (SQLite at $LOOPLINE_HOME/mlflow.db, the same store the embedded default uses, so
earlier runs stay visible; artifacts under $LOOPLINE_HOME/artifacts/mlflow), both on 127.0.0.1. It then
creates the work pools `cpu` and `gpu` (process type), the global concurrency limit `gpu` (one slot per
GPU, at least 1), registers the block types, deploys prefect.yaml and starts one process worker per
pool. Every process is started in its own session, and $LOOPLINE_HOME/stack.json records each pid with
its start time, so `down` signals exactly those process groups (and never a process that reused a pid).

The idle platform is three processes, ~600 MB RSS (it was 12 and ~2.9 GB): MLflow's job runner is off and
its uvicorn replaces the `mlflow server` process, the two pool workers share one process (recorded as
worker-cpu and worker-gpu, same pid), and neither Prefect process imports the kubernetes/docker/dask
collections (launch.py). Start-up overlaps: the servers start together, the workers start while the
deploy runs; `python -m bench footprint` measures both (memory, and the time until `up` returns).

Every later `loopline` command reads stack.json and talks to this Prefect API and MLflow server.

    state.py      stack.json (read/write), PROJECT_DIR, StackError
    urls.py       ports, the Prefect/MLflow URLs, database URLs (redacted, asyncpg)
    commands.py   each process's command line and environment
    launch.py     the Prefect/MLflow CLIs without what an idle local platform never uses; the workers process
    processes.py  start, recognise (pid + start time), stop, wait until healthy
    bootstrap.py  work pools, the `gpu` concurrency limit, block types, deployments
    templates.py  a migrated Prefect database that a fresh home starts from (no migrations on its start)
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flows.project import start_deploy
from flows.stack import templates
from flows.stack.bootstrap import (
    WORK_POOLS,
    count_gpus,
    create_concurrency_limits,
    create_work_pools,
    deploy_all,
    register_blocks,
)
from flows.stack.commands import (
    DEFAULT_WORKER_POLL_SECONDS,
    client_env,
    mlflow_env,
    mlflow_server_cmd,
    prefect_server_cmd,
    server_env,
    workers_cmd,
)
from flows.stack.processes import (
    STOP_GRACE_SECONDS,
    is_ours,
    stack_alive,
    start,
    stop_group,
    wait_http,
    wait_workers,
)
from flows.stack.state import PROJECT_DIR, STACK_FILE, StackError, read_stack, write_stack
from flows.stack.urls import (
    DEFAULT_MLFLOW_PORT,
    DEFAULT_PREFECT_PORT,
    asyncpg_url,
    mlflow_backend_store_uri,
    port_or_free,
    prefect_api_url,
    prefect_sqlite_url,
    redact_url,
    server_url,
)

__all__ = [
    "DEFAULT_MLFLOW_PORT",
    "DEFAULT_PREFECT_PORT",
    "DEFAULT_WORKER_POLL_SECONDS",
    "PROJECT_DIR",
    "STACK_FILE",
    "STOP_GRACE_SECONDS",
    "WORK_POOLS",
    "StackError",
    "asyncpg_url",
    "count_gpus",
    "create_concurrency_limits",
    "create_work_pools",
    "deploy_all",
    "down",
    "read_stack",
    "redact_url",
    "register_blocks",
    "up",
]


def up(
    home: str,
    *,
    postgres_url: str | None = None,
    with_workers: bool = True,
    prefect_port: int | None = None,
    mlflow_port: int | None = None,
    config_path: str | None = None,
    config: Any = None,
    worker_poll_seconds: float = DEFAULT_WORKER_POLL_SECONDS,
    deploy: bool = True,
    startup_timeout_seconds: float = 180.0,
) -> dict[str, Any]:
    """Start the stack for `home` (idempotent: a live stack is reported, not started twice).

    Returns prefect_api_url, prefect_ui_url, mlflow_tracking_uri, mlflow_ui_url, pids, work_pools,
    concurrency_limits, deployments, logs and database (credentials redacted); the same goes to
    $LOOPLINE_HOME/stack.json. `config_path` (a LifecycleConfig YAML), or `config` (a LifecycleConfig,
    e.g. with the CLI's --set overrides applied; written to $LOOPLINE_HOME/config.yaml), is what
    deployment runs use when they are given no config (exported to the workers as LOOPLINE_CONFIG).
    """
    root = Path(home).resolve()
    existing = read_stack(root)
    if existing is not None:
        if stack_alive(existing):
            return {**existing, "already_running": True}
        down(str(root))  # a stale stack.json (a crash, a reboot): clear what is left of it
    if postgres_url:
        asyncpg_url(postgres_url)  # a malformed URL is exit 2 before anything starts
    config_path = _resolve_config(root, config_path, config)
    for sub in ("prefect", "logs", "metrics", "artifacts/mlflow"):
        (root / sub).mkdir(parents=True, exist_ok=True)

    prefect_port = prefect_port or port_or_free(DEFAULT_PREFECT_PORT)
    mlflow_port = mlflow_port or port_or_free(DEFAULT_MLFLOW_PORT)
    api_url = prefect_api_url(prefect_port)
    mlflow_uri = server_url(mlflow_port)
    state: dict[str, Any] = {
        "home": str(root),
        "project_dir": str(PROJECT_DIR),
        "prefect_api_url": api_url,
        "prefect_ui_url": server_url(prefect_port),
        "mlflow_tracking_uri": mlflow_uri,
        "mlflow_ui_url": mlflow_uri,
        "database": redact_url(postgres_url) if postgres_url else prefect_sqlite_url(root),
        "mlflow_backend_store_uri": mlflow_backend_store_uri(root),
        "config_path": config_path,
        "started_at": datetime.now(UTC).isoformat(),
        "processes": [],
        "pids": {},
        "logs": {},
    }
    # a fresh SQLite home starts from a migrated copy when this machine has one (templates.py)
    prefect_db = None if postgres_url else root / "prefect" / "prefect.db"
    fresh_db = prefect_db is not None and not prefect_db.exists()
    if fresh_db:
        state["database_template"] = "seeded" if templates.seed(prefect_db) else None
    warm = None
    try:
        start(
            state,
            "prefect-server",
            prefect_server_cmd(prefect_port),
            server_env(root, postgres_url, prefect_port),
        )
        write_stack(root, state)  # from here on, `down` can clean up whatever follows
        env = client_env(root, state, config_path, worker_poll_seconds)
        # `prefect deploy` imports its CLI and the flows while the servers start; it deploys when told to
        warm = start_deploy(env) if deploy else None
        # The steps overlap where they can (start-up is mostly CPU-bound imports, in separate processes):
        # this process imports Prefect's client while the servers start; the workers start as soon as their
        # pools exist (before, `prefect worker start` would create them without loopline's job template)
        # and come up while the deploy runs; nothing before the end needs the MLflow server.
        preload = _preload(_import_prefect_client)
        wait_http(f"{api_url}/health", startup_timeout_seconds, state, "prefect-server")
        if fresh_db and state["database_template"] is None and templates.keep(prefect_db):
            state["database_template"] = "saved"  # migrated here, before anything of this home is in it
        preload.join()
        # the MLflow server (5 s of CPU to start) starts once the Prefect server is up: started beside it, on
        # two cores, it slowed the Prefect server's start, which everything else waits for
        start(state, "mlflow-server", mlflow_server_cmd(root, mlflow_port), mlflow_env(root))
        write_stack(root, state)

        state["work_pools"] = create_work_pools(api_url)
        if with_workers:  # one process runs a worker per pool (stack.json: worker-cpu, worker-gpu)
            start(
                state,
                "workers",
                workers_cmd(WORK_POOLS),
                env,
                record_as=tuple(f"worker-{p}" for p in WORK_POOLS),
            )
            write_stack(root, state)
        state["concurrency_limits"] = create_concurrency_limits(api_url)
        state["blocks"] = register_blocks(api_url)
        state["deployments"] = deploy_all(env, config_path, warm=warm) if deploy else []
        wait_http(f"{mlflow_uri}/health", startup_timeout_seconds, state, "mlflow-server")
        if with_workers:
            wait_workers(api_url, state, startup_timeout_seconds)
        write_stack(root, state)
    except BaseException:
        if warm is not None and warm.poll() is None:
            warm.kill()  # it never deployed
            warm.communicate()
        down(str(root))
        raise
    return state


def down(home: str, *, grace_seconds: float = STOP_GRACE_SECONDS) -> dict[str, Any]:
    """Stop the processes `up` recorded for `home` (workers first, then the servers) and remove
    stack.json. A pid that now belongs to another process (its start time differs) is left alone."""
    root = Path(home).resolve()
    state = read_stack(root)
    if state is None:
        return {
            "home": str(root),
            "stopped": [],
            "already_gone": [],
            "message": f"no {root / STACK_FILE}: nothing to stop",
        }
    stopped, gone, stopped_pids = [], [], set()
    # workers first: they hand SIGTERM to their flow runs while the API can still record it
    for proc in sorted(state.get("processes", []), key=lambda p: not p["name"].startswith("worker-")):
        if proc["pid"] in stopped_pids:  # one process recorded under several names (the workers)
            stopped.append(proc["name"])
        elif is_ours(proc):
            stop_group(proc["pid"], grace_seconds)
            stopped.append(proc["name"])
            stopped_pids.add(proc["pid"])
        else:
            gone.append(proc["name"])
    (root / STACK_FILE).unlink(missing_ok=True)
    return {"home": str(root), "stopped": stopped, "already_gone": gone}


def _import_prefect_client() -> None:
    """What the bootstrap steps import (about 3 s), done while the servers start."""
    import prefect.client.orchestration  # noqa: F401
    import prefect.client.schemas.actions  # noqa: F401

    import blocks  # noqa: F401


def _preload(target) -> threading.Thread:
    """Run `target` in a daemon thread; an import error there resurfaces when the step itself imports."""

    def quietly() -> None:
        try:
            target()
        except Exception:
            pass

    thread = threading.Thread(target=quietly, name="loopline-up-preload", daemon=True)
    thread.start()
    return thread


def _resolve_config(root: Path, config_path: str | None, config: Any) -> str | None:
    """The absolute path of the config the workers' runs use: `config` written to
    $LOOPLINE_HOME/config.yaml, else `config_path`, else None."""
    if config is not None:
        import yaml

        root.mkdir(parents=True, exist_ok=True)
        config_path = str(root / "config.yaml")
        resolved = config.model_copy(update={"home": str(root)})  # workers run elsewhere: no relative home
        Path(config_path).write_text(yaml.safe_dump(resolved.model_dump(mode="json"), sort_keys=False))
    if config_path:
        from loopline.config import load_config

        load_config(config_path)  # a broken config is exit 2 before anything starts
        config_path = str(Path(config_path).resolve())
    return config_path
