"""A Prefect API per LOOPLINE_HOME for the CLI: the first command that runs a flow starts one, every later
(and every concurrent) command in that home uses it, and it stops itself once no command has used it
for a while. Without it each command starts Prefect's ephemeral API (most of a no-op command's time), and
commands started together each start one and time out ("Timed out while attempting to connect to
ephemeral Prefect API").

- Never started when a Prefect API is configured (PREFECT_API_URL in the environment, or in Prefect's
  settings: profile, .env, prefect.toml), when `loopline up`'s stack is there (the CLI uses that one, see
  `_use_stack` in flows/cli.py), for `loopline serve` and `loopline status` (neither needs Prefect), nor
  with LOOPLINE_LOCAL_API=0 (Prefect's ephemeral API, as before).
- `prefect server start` on a free 127.0.0.1 port, PREFECT_HOME=$LOOPLINE_HOME/prefect-local (its own
  SQLite; `loopline up`'s server keeps $LOOPLINE_HOME/prefect), log $LOOPLINE_HOME/logs/local-api.log,
  under a small watchdog (this module run as a script) that leads the process group. The server dies
  with its watchdog.
- $LOOPLINE_HOME/local_api.json, beside stack.json: the API URL and the watchdog's pid and kernel start
  time (flows/stack/processes.py: a reused pid is never taken for ours), the idle timeout, the log.
- Locks (flock; the kernel drops them when a process dies): `start.lock`, so commands that start together
  start one server and the others wait for it; `users.lock`, held shared by every command for its whole
  life and taken exclusively by the watchdog to stop, so it never stops under a running command, and a
  command that comes meanwhile waits until it has stopped and then starts a fresh one.
- Idle: no command for LOOPLINE_LOCAL_API_IDLE_SECONDS (default 1200) since the last one ended.
- `loopline down` stops it (`stop`).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flows.stack.commands import prefect_server_cmd, server_env
from flows.stack.processes import is_ours, stack_alive, start, stop_group, wait_http
from flows.stack.state import StackError
from flows.stack.urls import port_or_free, prefect_api_url
from loopline.errors import ConfigError
from loopline.storage.files import atomic_write_text

STATE_FILE = "local_api.json"  # beside stack.json
LOCAL_DIR = "prefect-local"  # PREFECT_HOME of the server, and the locks and heartbeat
NAME = "local-api"  # its log: $LOOPLINE_HOME/logs/local-api.log
SWITCH_ENV = "LOOPLINE_LOCAL_API"  # 0 / false / off: Prefect's ephemeral API instead
IDLE_ENV = "LOOPLINE_LOCAL_API_IDLE_SECONDS"
DEFAULT_IDLE_SECONDS = 1200.0
STARTUP_TIMEOUT_SECONDS = 120.0
STOP_GRACE_SECONDS = 15.0
START_ATTEMPTS = 3  # a free port taken by someone else before the server binds it: try another

_users_lock: Any = None  # this process's users.lock, held shared until it exits


def enabled() -> bool:
    """On unless LOOPLINE_LOCAL_API is 0/false/off/no; POSIX only (flock, process groups)."""
    off = os.environ.get(SWITCH_ENV, "1").strip().lower() in ("0", "false", "off", "no")
    return not off and os.name == "posix"


def idle_seconds() -> float:
    raw = os.environ.get(IDLE_ENV)
    if not raw:
        return DEFAULT_IDLE_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ConfigError(f"{IDLE_ENV}={raw!r}: expected a number of seconds > 0")
    return value


def use(home: str | Path) -> str | None:
    """Point this process's Prefect at the local API of `home` (started if need be) and return its URL;
    None, changing nothing, when a Prefect API is configured or the switch is off."""
    if os.environ.get("PREFECT_API_URL") or not enabled() or _prefect_configured():
        return None
    url = ensure(home)
    os.environ["PREFECT_API_URL"] = url
    from prefect.context import refresh_global_settings_context

    refresh_global_settings_context()  # prefect read its settings at import, before the URL was set
    return url


def _prefect_configured() -> bool:
    """An API URL in Prefect's own settings (a profile, .env, prefect.toml). This imports prefect, which
    every command that gets here imports next anyway."""
    from prefect.settings import get_current_settings

    return get_current_settings().api.url is not None


def ensure(home: str | Path) -> str:
    """The URL of `home`'s local API, started if it is not running. Holds users.lock (shared) for the
    rest of this process's life, so the watchdog does not stop the server under it."""
    root = Path(home).resolve()
    local = root / LOCAL_DIR
    local.mkdir(parents=True, exist_ok=True)
    _hold_users_lock(local)
    state = read_state(root)
    if state is not None and stack_alive(state):
        return state["prefect_api_url"]
    with _flock(local / "start.lock"):  # concurrent first commands: one starts, the others wait here
        state = read_state(root)
        if state is not None and _answers(state, patience=STARTUP_TIMEOUT_SECONDS):  # slow is not dead
            return state["prefect_api_url"]
        if state is not None:  # gone, or ours but not answering: clear it
            _stop_state(root, state)
        return _start(root)["prefect_api_url"]


def stop(home: str | Path) -> dict[str, Any]:
    """Stop `home`'s local API (for `loopline down`); a recorded pid that is no longer ours is left alone."""
    root = Path(home).resolve()
    if read_state(root) is None:
        return {"stopped": False, "message": "no local Prefect API"}
    (root / LOCAL_DIR).mkdir(parents=True, exist_ok=True)
    with _flock(root / LOCAL_DIR / "start.lock"):
        state = read_state(root)
        if state is None:
            return {"stopped": False, "message": "no local Prefect API"}
        stopped = _stop_state(root, state)
    return {"stopped": stopped, "url": state.get("prefect_api_url")}


def read_state(root: Path) -> dict[str, Any] | None:
    try:
        return json.loads((root / STATE_FILE).read_text())
    except (FileNotFoundError, ValueError):  # none, or cut short by a crash: start afresh
        return None


# -- start and stop --------------------------------------------------------------------------------------


def _start(root: Path) -> dict[str, Any]:
    (root / "logs").mkdir(parents=True, exist_ok=True)
    idle = idle_seconds()
    last: Exception | None = None
    for _ in range(START_ATTEMPTS):
        port = port_or_free(0)  # 0: any free port
        state: dict[str, Any] = {
            "home": str(root),
            "prefect_api_url": prefect_api_url(port),
            "prefect_home": str(root / LOCAL_DIR),
            "idle_seconds": idle,
            "started_at": datetime.now(UTC).isoformat(),
            "processes": [],
            "pids": {},
            "logs": {},
        }
        env = server_env(root, None, port)
        env["PREFECT_HOME"] = state["prefect_home"]
        cmd = [sys.executable, "-m", "flows.local_api", "--port", str(port), "--idle-seconds", str(idle)]
        start(state, NAME, cmd, env)
        _write_state(root, state)
        try:
            wait_http(f"{state['prefect_api_url']}/health", STARTUP_TIMEOUT_SECONDS, state, NAME)
            return state
        except StackError as exc:
            last = exc
            _stop_state(root, state)
        except BaseException:
            _stop_state(root, state)
            raise
    raise StackError(
        f"the local Prefect API for {root} did not start: {last}\n"
        f"Set {SWITCH_ENV}=0 to use Prefect's ephemeral API instead, or PREFECT_API_URL for a server of yours."
    )


def _stop_state(root: Path, state: dict[str, Any]) -> bool:
    """Stop the recorded watchdog's process group (the server with it) and remove the record."""
    stopped = False
    for proc in state.get("processes", []):
        if is_ours(proc):
            stop_group(proc["pid"], STOP_GRACE_SECONDS)
            stopped = True
    _remove_state(root, state)
    return stopped


def _answers(state: dict[str, Any], patience: float) -> bool:
    """Alive and answering /health within `patience` seconds (a busy server is not a dead one)."""
    deadline = time.monotonic() + patience
    while True:
        if stack_alive(state):
            return True
        if not all(is_ours(p) for p in state.get("processes", [])) or time.monotonic() > deadline:
            return False
        time.sleep(0.5)


def _write_state(root: Path, state: dict[str, Any]) -> None:
    atomic_write_text(root / STATE_FILE, json.dumps(state, indent=2, sort_keys=True))


def _remove_state(root: Path, state: dict[str, Any]) -> None:
    """Remove local_api.json if it still records `state`'s process (never a newer server's record)."""
    current = read_state(root)
    if current is not None and current.get("pids") != state.get("pids"):
        return
    (root / STATE_FILE).unlink(missing_ok=True)


# -- locks and heartbeat --------------------------------------------------------------------------------


@contextmanager
def _flock(path: Path):
    import fcntl

    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _hold_users_lock(local: Path) -> None:
    """users.lock, shared, for this process's life (closed, and so released, only when it exits); blocks
    while the watchdog holds it exclusively to stop an idle server."""
    global _users_lock
    if _users_lock is not None:
        return
    import fcntl

    fh = open(local / "users.lock", "a")  # not inherited by child processes (PEP 446)
    fcntl.flock(fh, fcntl.LOCK_SH)
    _users_lock = fh
    _touch(local / "heartbeat")
    atexit.register(_touch, local / "heartbeat")  # idle time counts from the end of the last command


def _touch(path: Path) -> None:
    try:
        path.touch()
    except OSError:  # the home is gone (a temporary one): nothing to keep alive
        pass


def _idle_for(local: Path, since: float) -> float:
    try:
        last = (local / "heartbeat").stat().st_mtime
    except FileNotFoundError:
        last = since
    return time.time() - max(last, since)


# -- the watchdog: `python -m flows.local_api --port P --idle-seconds S` -----------------------------------


def _die_with_parent() -> None:
    """In the server's child process: SIGTERM when the watchdog dies, however it dies (Linux)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _watch(port: int, idle: float) -> int:
    """Run `prefect server start` (environment, cwd and log from `_start`) and stop it after `idle`
    seconds without a command: only with users.lock held exclusively, so no command is using it."""
    import fcntl

    root = Path(os.environ["LOOPLINE_HOME"])
    local = root / LOCAL_DIR
    server = subprocess.Popen(prefect_server_cmd(port), preexec_fn=_die_with_parent)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `down`: the group gets SIGTERM
    born, poll = time.time(), min(max(idle / 4, 0.2), 15.0)
    try:
        while server.poll() is None:
            time.sleep(poll)
            if _idle_for(local, born) < idle:
                continue
            with open(local / "users.lock", "a") as fh:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # a command is running
                    continue
                if _idle_for(local, born) < idle:  # one ran in between
                    continue
                state = read_state(root)
                if state is not None and state.get("pids", {}).get(NAME) == os.getpid():
                    (root / STATE_FILE).unlink(missing_ok=True)
                _terminate(server)
                print(f"local Prefect API: idle for {idle:.0f} s, stopped", flush=True)
                return 0
        return server.returncode or 0
    finally:
        _terminate(server)


def _terminate(server: subprocess.Popen) -> None:
    if server.poll() is not None:
        return
    server.terminate()
    try:
        server.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.local_api", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--idle-seconds", type=float, default=DEFAULT_IDLE_SECONDS)
    args = parser.parse_args(argv)
    return _watch(args.port, args.idle_seconds)


if __name__ == "__main__":
    sys.exit(main())
