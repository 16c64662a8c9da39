"""`loopline up` / `loopline down`: a real local stack under $LOOPLINE_HOME, and only that stack.

`up` starts `prefect server start` (SQLite under $LOOPLINE_HOME/prefect, or Postgres when given a URL)
and `mlflow server` (SQLite at $LOOPLINE_HOME/mlflow.db, the same store the embedded default uses, so
earlier runs stay visible; artifacts under $LOOPLINE_HOME/artifacts/mlflow), both on 127.0.0.1. It then
creates the work pools `cpu` and `gpu` (process type), the global concurrency limit `gpu` (one slot per
GPU, at least 1), registers the block types, deploys prefect.yaml and starts one process worker per
pool. Every process is started in its own session, and $LOOPLINE_HOME/stack.json records each pid with
its start time, so `down` signals exactly those process groups (and never a process that reused a pid).

Every later `loopline` command reads stack.json and talks to this Prefect API and MLflow server.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from loopline.errors import ConfigError, LooplineError

PROJECT_DIR = Path(__file__).resolve().parent.parent
STACK_FILE = "stack.json"
WORK_POOLS = ("cpu", "gpu")
DEFAULT_PREFECT_PORT = 4200
DEFAULT_MLFLOW_PORT = 5000
# Process workers poll the API for scheduled runs; Prefect's default (10 s) makes an event-triggered
# retrain wait that long before it starts.
DEFAULT_WORKER_POLL_SECONDS = 5.0
# A worker gets this long to hand its flow runs the SIGTERM and exit before the group gets SIGKILL;
# Prefect's own cancellation grace period is 30 s (STACK.md), long enough to write a checkpoint.
STOP_GRACE_SECONDS = 30.0


class StackError(LooplineError):
    """A stack process did not start or answer; the message names its log file."""

    exit_code = 1


# -- public API ------------------------------------------------------------------------------------


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
        if _stack_alive(existing):
            return {**existing, "already_running": True}
        down(str(root))  # a stale stack.json (a crash, a reboot): clear what is left of it
    if postgres_url:
        asyncpg_url(postgres_url)  # a malformed URL is exit 2 before anything starts
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
    for sub in ("prefect", "logs", "metrics", "artifacts/mlflow"):
        (root / sub).mkdir(parents=True, exist_ok=True)

    prefect_port = prefect_port or _port_or_free(DEFAULT_PREFECT_PORT)
    mlflow_port = mlflow_port or _port_or_free(DEFAULT_MLFLOW_PORT)
    prefect_api_url = f"http://127.0.0.1:{prefect_port}/api"
    mlflow_uri = f"http://127.0.0.1:{mlflow_port}"
    state: dict[str, Any] = {
        "home": str(root),
        "project_dir": str(PROJECT_DIR),
        "prefect_api_url": prefect_api_url,
        "prefect_ui_url": f"http://127.0.0.1:{prefect_port}",
        "mlflow_tracking_uri": mlflow_uri,
        "mlflow_ui_url": mlflow_uri,
        "database": redact_url(postgres_url)
        if postgres_url
        else f"sqlite:///{root / 'prefect' / 'prefect.db'}",
        "mlflow_backend_store_uri": f"sqlite:///{root / 'mlflow.db'}",
        "config_path": config_path,
        "started_at": datetime.now(UTC).isoformat(),
        "processes": [],
        "pids": {},
        "logs": {},
    }
    try:
        _start(state, "prefect-server", _prefect_server_cmd(prefect_port), _server_env(root, postgres_url))
        _start(state, "mlflow-server", _mlflow_server_cmd(root, mlflow_port), _base_env(root))
        _write_stack(root, state)  # from here on, `down` can clean up whatever follows
        _wait_http(f"{prefect_api_url}/health", startup_timeout_seconds, state, "prefect-server")
        _wait_http(f"{mlflow_uri}/health", startup_timeout_seconds, state, "mlflow-server")

        client_env = _client_env(root, state, config_path, worker_poll_seconds)
        state["work_pools"] = create_work_pools(prefect_api_url)
        state["concurrency_limits"] = create_concurrency_limits(prefect_api_url)
        state["blocks"] = register_blocks(prefect_api_url)
        state["deployments"] = deploy_all(client_env, config_path) if deploy else []
        if with_workers:
            for pool in WORK_POOLS:
                _start(state, f"worker-{pool}", _worker_cmd(pool), client_env)
            _wait_workers(prefect_api_url, state, startup_timeout_seconds)
        _write_stack(root, state)
    except BaseException:
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
    stopped, gone = [], []
    # workers first: they hand SIGTERM to their flow runs while the API can still record it
    for proc in sorted(state.get("processes", []), key=lambda p: not p["name"].startswith("worker-")):
        if _is_ours(proc):
            _stop_group(proc["pid"], grace_seconds)
            stopped.append(proc["name"])
        else:
            gone.append(proc["name"])
    (root / STACK_FILE).unlink(missing_ok=True)
    return {"home": str(root), "stopped": stopped, "already_gone": gone}


def read_stack(home: str | Path) -> dict[str, Any] | None:
    """The stack.json `up` wrote for this home, or None."""
    path = Path(home) / STACK_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}); remove it and run `loopline up` again") from exc


def redact_url(url: str) -> str:
    """A connection URL with its password replaced, for stack.json and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


# -- bootstrap against the running API ---------------------------------------------------------------


def create_work_pools(api_url: str) -> list[str]:
    """Process-type pools `cpu` and `gpu` (an existing pool is kept as it is)."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    template = _process_job_template()
    with _client(api_url) as client:
        for name in WORK_POOLS:
            try:
                client.create_work_pool(WorkPoolCreate(name=name, type="process", base_job_template=template))
            except ObjectAlreadyExists:
                pass
    return list(WORK_POOLS)


def create_concurrency_limits(api_url: str) -> dict[str, int]:
    """The global concurrency limit `gpu`: one slot per visible GPU, at least 1 (a CPU-only host
    still serialises training jobs on its one "accelerator"). Training takes it with
    `prefect.concurrency.sync.concurrency("gpu", occupy=k)`."""
    from tasks.common import ensure_global_limit

    slots = max(count_gpus(), 1)
    with _client(api_url) as client:
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


def deploy_all(env: dict[str, str], config_path: str | None) -> list[str]:
    """Deploy prefect.yaml (flows/project.py says why not `prefect deploy`); the retrain trigger's
    `within` follows retrain.cooldown_hours, so a burst of drift events starts one run."""
    from flows.project import deploy_project
    from loopline.config import load_config

    cooldown_seconds = load_config(config_path).retrain.cooldown_hours * 3600
    with _client(env["PREFECT_API_URL"]) as client:
        return deploy_project(
            client, env=env, trigger_within_seconds={"loopline.drift.detected": cooldown_seconds}
        )


# -- processes -------------------------------------------------------------------------------------------


def _prefect_server_cmd(port: int) -> list[str]:
    return [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]


def _mlflow_server_cmd(root: Path, port: int) -> list[str]:
    return [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--default-artifact-root", (root / "artifacts" / "mlflow").as_uri(),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip


def _worker_cmd(pool: str) -> list[str]:
    name = f"loopline-{pool}-{socket.gethostname()}"
    return [
        sys.executable,
        "-m",
        "prefect",
        "worker",
        "start",
        "--pool",
        pool,
        "--type",
        "process",
        "--name",
        name,
    ]


def _base_env(root: Path) -> dict[str, str]:
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


def _server_env(root: Path, postgres_url: str | None) -> dict[str, str]:
    env = _base_env(root)
    env.pop("PREFECT_SERVER_DATABASE_CONNECTION_URL", None)
    env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
    if postgres_url:  # env only: never on a command line, where `ps` shows the password
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = asyncpg_url(postgres_url)
    return env


def asyncpg_url(url: str) -> str:
    """Prefect's server talks to Postgres through asyncpg: `postgresql://` becomes `postgresql+asyncpg://`."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("postgres", "postgresql", "postgresql+asyncpg"):
        raise ConfigError(
            f"postgres URL {redact_url(url)!r}: expected postgresql://user:password@host:port/database"
        )
    return f"postgresql+asyncpg://{rest}"


def _client_env(
    root: Path, state: dict[str, Any], config_path: str | None, poll_seconds: float
) -> dict[str, str]:
    """What the CLI helpers and the workers (and so every flow run they start) see."""
    env = _base_env(root)
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
    env.setdefault("LOOPLINE_LANDING", str(root / "landing"))
    if config_path:
        env["LOOPLINE_CONFIG"] = config_path
    return env


def _start(state: dict[str, Any], name: str, cmd: list[str], env: dict[str, str]) -> None:
    root = Path(state["home"])
    log = root / "logs" / f"{name}.log"
    with open(log, "ab") as fh:
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=PROJECT_DIR,
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: `down` signals it and its children only
        )
    state["processes"].append(
        {"name": name, "pid": proc.pid, "start_time": _start_time(proc.pid), "log": str(log)}
    )
    state["pids"][name] = proc.pid
    state["logs"][name] = str(log)


def _is_ours(proc: dict[str, Any]) -> bool:
    """Alive and still the process we started (same kernel start time), so a reused pid is safe."""
    pid = proc["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process now
        return False
    recorded, now = proc.get("start_time"), _start_time(pid)
    return recorded is None or now is None or recorded == now


def _start_time(pid: int) -> int | None:
    """The process start time in clock ticks since boot (/proc/PID/stat field 22); None off Linux."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _stop_group(pid: int, grace_seconds: float) -> None:
    """SIGTERM the process group `pid` leads, then SIGKILL whatever is left after the grace period."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline:
        if not _group_alive(pid):
            break
        time.sleep(0.2)
    else:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _reap(pid)


def _group_alive(pgid: int) -> bool:
    _reap(pgid)
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    if Path("/proc").is_dir():  # zombies still count for killpg; look for a live member
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[2]) == pgid and fields[0] != "Z":
                    return True
        return False
    return True


def _reap(pid: int) -> None:
    """Collect the exit status when the leader is our own child (same process started it)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _stack_alive(state: dict[str, Any]) -> bool:
    procs = state.get("processes", [])
    if not procs or not all(_is_ours(p) for p in procs):
        return False
    try:
        _get(f"{state['prefect_api_url']}/health", timeout=3)
    except Exception:
        return False
    return True


def _wait_http(url: str, timeout: float, state: dict[str, Any], name: str) -> None:
    """Until `url` answers *from the process we started*: another server that took the port first
    (a race for 4200/5000) must not pass for ours."""
    proc = next(p for p in state["processes"] if p["name"] == name)
    port = int(urlsplit(url).port or 80)
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if not _is_ours(proc):
            raise StackError(f"{name} exited during start-up; see {proc['log']}:\n{_tail(proc['log'])}")
        owners = listener_pids(port)
        if owners is not None and owners and not owners & _group_pids(proc["pid"]):
            raise StackError(
                f"port {port} is held by another process (pid {sorted(owners)}), not by the {name} we started; "
                "choose another port"
            )
        try:
            _get(url, timeout=2)
            if owners is None or owners & _group_pids(proc["pid"]):
                return
        except Exception as exc:  # not answering yet
            last = exc
        time.sleep(0.3)
    raise StackError(f"{name} did not answer {url} within {timeout:.0f} s ({last}); see {proc['log']}")


def listener_pids(port: int) -> set[int] | None:
    """Pids with a listening TCP socket on `port` (Linux /proc); None where that cannot be read."""
    if not Path("/proc/net/tcp").exists():
        return None
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (entry / "fd").iterdir()):
                pids.add(int(entry.name))
        except OSError:  # gone, or not ours to read
            continue
    return pids


def _group_pids(pgid: int) -> set[int]:
    members = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                    members.add(int(entry.name))
            except OSError:
                continue
    return members


def _wait_workers(api_url: str, state: dict[str, Any], timeout: float) -> None:
    """Until each pool has a worker online (it has polled the API), so a run scheduled next is picked up."""
    from prefect.client.schemas.filters import WorkerFilter, WorkerFilterStatus

    deadline = time.monotonic() + timeout
    waiting = set(WORK_POOLS)
    with _client(api_url) as client:
        while waiting and time.monotonic() < deadline:
            for pool in list(waiting):
                proc = next(p for p in state["processes"] if p["name"] == f"worker-{pool}")
                if not _is_ours(proc):
                    raise StackError(
                        f"worker for pool {pool} exited; see {proc['log']}:\n{_tail(proc['log'])}"
                    )
                online = client.read_workers_for_work_pool(  # explicit offset/limit: null is a 422 here
                    pool,
                    worker_filter=WorkerFilter(status=WorkerFilterStatus(any_=["ONLINE"])),
                    offset=0,
                    limit=10,
                )
                if online:
                    waiting.discard(pool)
            time.sleep(0.5)
    if waiting:
        raise StackError(f"no worker came online for pool(s) {sorted(waiting)} within {timeout:.0f} s")


def _write_stack(root: Path, state: dict[str, Any]) -> None:
    path = root / STACK_FILE
    tmp = path.with_name(f".{STACK_FILE}.tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
    os.replace(tmp, path)


# -- small helpers ---------------------------------------------------------------------------------------


def _client(api_url: str):
    """A sync Prefect client bound to `api_url` (this process may be configured for another API)."""
    from contextlib import contextmanager

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    @contextmanager
    def bound():
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            with get_client(sync_client=True) as client:
                yield client

    return bound()


def _process_job_template() -> dict[str, Any] | None:
    path = PROJECT_DIR / "infra" / "work-pools" / "process.json"
    return json.loads(path.read_text()) if path.exists() else None


def _port_or_free(preferred: int) -> int:
    """The conventional port when it is free on 127.0.0.1, else any free one."""
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise StackError("no free TCP port on 127.0.0.1")


def _get(url: str, timeout: float) -> None:
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as resp:
        if resp.status >= 500:
            raise OSError(f"{url}: HTTP {resp.status}")


def _tail(path: str, lines: int = 20) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
