"""The stack's child processes: starting each in its own session with a log file, recognising them
again by pid *and* kernel start time (a reused pid is never ours), stopping their process groups, and
waiting until each answers (the servers over HTTP, the workers through the Prefect API)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flows.stack.bootstrap import WORK_POOLS, prefect_client
from flows.stack.state import PROJECT_DIR, StackError

# A worker gets this long to hand its flow runs the SIGTERM and exit before the group gets SIGKILL;
# Prefect's own cancellation grace period is 30 s, long enough to write a checkpoint.
STOP_GRACE_SECONDS = 30.0


# -- start, recognise, stop ----------------------------------------------------------------------------


def start(
    state: dict[str, Any],
    name: str,
    cmd: list[str],
    env: dict[str, str],
    *,
    record_as: tuple[str, ...] = (),
) -> None:
    """Start `cmd` in its own session, output to $LOOPLINE_HOME/logs/NAME.log, and record it in `state`
    (under each of `record_as` instead of NAME when given: one process serving several roles)."""
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
    started = start_time(proc.pid)
    for role in record_as or (name,):
        state["processes"].append({"name": role, "pid": proc.pid, "start_time": started, "log": str(log)})
        state["pids"][role] = proc.pid
        state["logs"][role] = str(log)


def is_ours(proc: dict[str, Any]) -> bool:
    """Alive and still the process we started (same kernel start time), so a reused pid is safe."""
    pid = proc["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process now
        return False
    recorded, now = proc.get("start_time"), start_time(pid)
    return recorded is None or now is None or recorded == now


def start_time(pid: int) -> int | None:
    """The process start time in clock ticks since boot (/proc/PID/stat field 22); None off Linux."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def stop_group(pid: int, grace_seconds: float) -> None:
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


# -- health ----------------------------------------------------------------------------------------------


def stack_alive(state: dict[str, Any]) -> bool:
    """Every recorded process is still ours and the Prefect API answers."""
    procs = state.get("processes", [])
    if not procs or not all(is_ours(p) for p in procs):
        return False
    try:
        _get(f"{state['prefect_api_url']}/health", timeout=3)
    except Exception:
        return False
    return True


def wait_http(url: str, timeout: float, state: dict[str, Any], name: str) -> None:
    """Until `url` answers *from the process we started*: another server that took the port first
    (a race for 4200/5000) must not pass for ours."""
    proc = next(p for p in state["processes"] if p["name"] == name)
    port = int(urlsplit(url).port or 80)
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if not is_ours(proc):
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


def wait_workers(api_url: str, state: dict[str, Any], timeout: float) -> None:
    """Until each pool has a worker online (it has polled the API), so a run scheduled next is picked up."""
    from prefect.client.schemas.filters import WorkerFilter, WorkerFilterStatus

    deadline = time.monotonic() + timeout
    waiting = set(WORK_POOLS)
    with prefect_client(api_url) as client:
        while waiting and time.monotonic() < deadline:
            for pool in list(waiting):
                proc = next(p for p in state["processes"] if p["name"] == f"worker-{pool}")
                if not is_ours(proc):
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
