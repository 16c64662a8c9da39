"""`python -m flows.stack.launch prefect|mlflow ARGS...`: Prefect's and MLflow's own CLIs, minus what an idle
local platform pays for and never uses. Everything else (options, signals, logs) is the tools' own.
`... workers POOL=NAME...`: the process workers of `loopline up`, one per pool, in one process (`run_workers`).
`... deploy-on-go FILE ARGS...`: `prefect ARGS` (the deploy of prefect.yaml FILE), imported ahead (`deploy_on_go`).

- `prefect ...` (the server and the process workers): without Prefect's integration collections. This venv has
  prefect-kubernetes, prefect-docker and prefect-dask for the other pool types (`loopline up --pool-type`), and
  Prefect imports every installed collection in each server and worker (the worker to report them in its
  heartbeat, the server to register their block types): about 120 MB and 1-3 CPU seconds per process, for
  kubernetes and docker clients a process worker never calls. The local server still registers Prefect's
  core block types; `prefect block register -m prefect_kubernetes` adds a collection's types when wanted.
- `mlflow server ...`: the uvicorn server *replaces* the `mlflow server` process (exec) instead of running as its
  child, so the platform does not keep a second ~250 MB Python process whose only job is to wait for it. The
  pid stays the one `loopline up` recorded, and SIGTERM reaches uvicorn directly. The job runner must be off
  (MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false, as `commands.server_env` sets): with it on, `mlflow server`
  launches huey consumers after the server starts, so it falls back to MLflow's own parent process.

- `prefect server start`: the cyclic garbage collector runs in a thread of its own, not on the server's event
  loop (`collect_garbage_off_the_loop`). On SQLite, each of the server's database connections runs its
  statements in an aiosqlite thread, and SQLite holds that connection's mutex while a statement waits (up to
  Prefect's 60 s busy timeout) for another connection's write lock. When a collection on the event loop clears
  a stale `sqlite3.Cursor` of such a connection, resetting its statement blocks on that mutex: the loop stops,
  the transaction holding the write lock never gets to commit, and the server hangs until the busy timeout
  ends it with "database is locked" (caught with py-spy: the main thread in `pthread_mutex_lock` <-
  `sqlite3_reset` <- `cursor_clear` <- `gc_collect_main`, an aiosqlite thread in `sqlite3_step` <-
  `sqlite3InvokeBusyHandler`). A collection in its own thread waits there instead, while the loop commits.

Both hooks are private names of the pinned versions (prefect 3.8.8, mlflow 3.17.x); when a later version
renames them, the hook is skipped and the tool runs exactly as its own CLI does (heavier, still correct).
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import time


def skip_prefect_collections() -> bool:
    """Mark Prefect's collection registry as loaded (and empty). False when this Prefect has no such cache."""
    try:
        import prefect._internal.plugins.collections as collections
    except ImportError:
        return False
    if not hasattr(collections, "_collections"):
        return False
    collections._collections = {}
    return True


def collect_garbage_off_the_loop(interval: float = 0.1) -> threading.Thread | None:
    """Turn off automatic collection and collect from a daemon thread instead, with the interpreter's own
    generation thresholds checked every `interval` seconds. None when automatic collection was already off."""
    if not gc.isenabled():
        return None
    gc.disable()
    threshold0, threshold1, threshold2 = gc.get_threshold()

    def collect() -> None:
        while True:
            time.sleep(interval)
            young, middle, old = gc.get_count()
            if young < threshold0:
                continue
            if middle + 1 < threshold1:
                gc.collect(0)
            elif old + 1 < threshold2:
                gc.collect(1)
            else:
                gc.collect(2)

    thread = threading.Thread(target=collect, name="loopline-gc", daemon=True)
    thread.start()
    return thread


def exec_mlflow_server() -> bool:
    """Make `mlflow server` exec its uvicorn command instead of starting it as a child and waiting."""
    from mlflow.environment_variables import MLFLOW_SERVER_ENABLE_JOB_EXECUTION

    if MLFLOW_SERVER_ENABLE_JOB_EXECUTION.get():
        return False  # the job runner is launched after the server starts: keep MLflow's parent process
    try:
        import mlflow.server as server
    except ImportError:
        return False
    spawn = getattr(server, "_exec_cmd", None)
    if spawn is None:
        return False

    def exec_server(cmd, *args, extra_env=None, synchronous=True, **kwargs):
        if synchronous or args or kwargs.get("env") is not None:
            return spawn(cmd, *args, extra_env=extra_env, synchronous=synchronous, **kwargs)
        argv = [str(c) for c in cmd]
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(argv[0], argv, {**os.environ, **(extra_env or {})})

    server._exec_cmd = exec_server
    return True


def run_workers(specs: list[str]) -> None:
    """A Prefect process worker per `POOL=NAME`, all in this one process and event loop: what
    `prefect worker start --type process --pool POOL --name NAME` runs, once per pool (the same settings:
    PREFECT_WORKER_QUERY_SECONDS, _PREFETCH_SECONDS, _HEARTBEAT_SECONDS; the same signal handling: the first
    SIGTERM or SIGINT stops polling, a second one kills). Each worker still polls, heartbeats and starts its
    flow runs as its own subprocesses; one Python process instead of two saves ~100 MB and a Prefect import."""
    import asyncio

    skip_prefect_collections()
    from prefect.settings import PREFECT_WORKER_HEARTBEAT_SECONDS, PREFECT_WORKER_PREFETCH_SECONDS
    from prefect.utilities.processutils import setup_signal_handlers_worker
    from prefect.workers.process import ProcessWorker

    pools = [spec.split("=", 1) for spec in specs]
    setup_signal_handlers_worker(os.getpid(), "the process workers", print)

    async def serve() -> None:
        workers = [
            ProcessWorker(
                name=name,
                work_pool_name=pool,
                prefetch_seconds=PREFECT_WORKER_PREFETCH_SECONDS.value(),
                heartbeat_interval_seconds=int(PREFECT_WORKER_HEARTBEAT_SECONDS.value()),
            )
            for pool, name in pools
        ]
        await asyncio.gather(*(worker.start(printer=_print) for worker in workers))

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:  # the signal handler's SIGINT: the workers have stopped polling
        _print(f"Workers {', '.join(name for _, name in pools)} stopped!")


def deploy_on_go(prefect_file: str, args: list[str]) -> None:
    """`prefect ARGS` run by Prefect's own CLI app, once a line arrives on stdin; before that, Prefect's CLI
    and the modules of prefect.yaml's entrypoints (and so what they import) load, while `loopline up` waits
    for its servers. An empty stdin (`up` failed first) exits without deploying.

    `prefect deploy` loads each entrypoint by executing its file again (`load_script_as_module`), so every
    flow in that file was decorated again and its parameter schema (pydantic's JSON schema of
    LifecycleConfig, ~0.1 s each) built again, then once more per deployment: 2.8 s of re-execution and
    31 schema builds in a 14 s deploy here. In this process only (it deploys and exits), a project file
    resolves to its already imported package module (`flows/lifecycle.py` -> `flows.lifecycle`, the same
    code), and a deployment takes its flow's schema from the flow (`deploy_caches`)."""
    import importlib
    from pathlib import Path

    import yaml
    from prefect.cli import app

    try:  # the deploy command's own imports (a private module of prefect 3.8.8: skipped when renamed)
        importlib.import_module("prefect.cli.deploy._core")
    except ImportError:
        pass
    deploy_caches()
    project = yaml.safe_load(Path(prefect_file).read_text()) or {}
    for deployment in project.get("deployments", []):
        path = str(deployment.get("entrypoint", "")).split(":", 1)[0]
        if path.endswith(".py"):
            try:
                importlib.import_module(path[: -len(".py")].replace("/", "."))
            except Exception:  # the deploy itself reports a broken entrypoint, in Prefect's words
                pass
    if not sys.stdin.readline().strip():
        return
    sys.argv = ["prefect", *args]
    app()


def deploy_caches() -> bool:
    """For a process that only deploys: a script entrypoint inside this project is its package module, and
    a flow's parameter schema is the one Prefect built when it decorated that flow (`Flow.parameters`, the
    same function of the same signature) instead of a new build per deployment. False (nothing changed)
    when Prefect's private names moved. Files outside the project, or not importable as a module, load as
    Prefect loads them."""
    from pathlib import Path

    try:
        import prefect.cli.deploy._core as deploy_core
        import prefect.deployments.runner as runner
        import prefect.utilities.importtools as importtools
    except ImportError:
        return False
    load_script = getattr(importtools, "load_script_as_module", None)
    schema = getattr(deploy_core, "parameter_schema", None)
    if load_script is None or schema is None or getattr(load_script, "loopline_cached", False):
        return load_script is not None and schema is not None
    root = Path(__file__).resolve().parents[2]

    def load_script_as_module(path: str):
        import importlib

        resolved = Path(path).resolve()
        if resolved.suffix == ".py" and resolved.is_relative_to(root):
            name = ".".join(resolved.relative_to(root).with_suffix("").parts)
            try:
                return importlib.import_module(name)
            except Exception:  # Prefect's own load reports it, in its words (a ScriptError)
                pass
        return load_script(path)

    def parameter_schema(fn):
        built = getattr(fn, "parameters", None)
        if type(built).__name__ == "ParameterSchema" and callable(getattr(fn, "fn", None)):
            return built.model_copy(deep=True)  # a deployment may mark its own fields read-only in its copy
        return schema(fn)

    load_script_as_module.loopline_cached = True  # type: ignore[attr-defined]
    importtools.load_script_as_module = load_script_as_module
    deploy_core.parameter_schema = parameter_schema
    if hasattr(runner, "parameter_schema"):
        runner.parameter_schema = parameter_schema
    return True


def _print(*args, **kwargs) -> None:
    print(*args, **kwargs, flush=True)


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in ("prefect", "mlflow", "workers", "deploy-on-go"):
        sys.exit(
            "usage: python -m flows.stack.launch prefect|mlflow ARGS... | workers POOL=NAME... | "
            "deploy-on-go PREFECT_FILE ARGS..."
        )
    if argv[0] == "workers":
        run_workers(argv[1:])
        return
    if argv[0] == "deploy-on-go":
        deploy_on_go(argv[1], argv[2:])
        return
    tool, args = argv[0], argv[1:]
    sys.argv = [tool, *args]
    if tool == "prefect":
        skip_prefect_collections()
        if args[:2] == ["server", "start"]:
            collect_garbage_off_the_loop()
        from prefect.cli import app

        app()
    else:
        if args[:1] == ["server"]:
            exec_mlflow_server()
        from mlflow.cli import cli

        cli.main(args=args, prog_name="mlflow")


if __name__ == "__main__":
    main(sys.argv[1:])
