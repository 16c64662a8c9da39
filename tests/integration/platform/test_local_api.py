"""The per-home Prefect API of the CLI (flows/local_api.py), for real: commands run as separate processes,
as users start them, without PREFECT_API_URL (the session sets it; these unset it). Every process a test
starts is stopped in a finally, and the test fails if one is left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from flows import local_api
from tests.conftest import free_port

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[3]


def env_for(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_", "LOOPLINE_LOCAL_API"))}
    env.pop("LOOPLINE_LAKE_URI", None)
    env.update(LOOPLINE_HOME=str(home), MLFLOW_TRACKING_URI=f"sqlite:///{home / 'mlflow.db'}", **extra)
    return env


def loopline(home: Path, *args: str, **extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "flows.cli", *args, "--json"],
        cwd=REPO,
        env=env_for(home, **extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen, code: int = 0) -> dict:
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == code, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def flow_command(home: Path, **extra: str) -> subprocess.Popen:
    """A command that runs a flow and fails fast inside it (exit 2: no such dataset): a flow run on the API."""
    return loopline(home, "features", "--dataset", "nope", **extra)


def ours(home: Path) -> list[int]:
    """Pids of the local API processes (watchdog and server) of `home`, found by their environment."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if f"LOOPLINE_HOME={home}".encode() in environ and (
            b"flows.local_api" in cmdline or b"server" in cmdline
        ):
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                pids.append(int(entry.name))
    return sorted(pids)


def flow_runs(api: str) -> list[dict]:
    response = httpx.post(f"{api}/flow_runs/filter", json={"limit": 50, "offset": 0}, timeout=30)
    response.raise_for_status()
    return response.json()


def wait_until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


@pytest.fixture
def homes(tmp_path):
    """Fresh LOOPLINE_HOMEs; whatever local API is left in them is killed, and that fails the test."""
    made: list[Path] = []

    def make(name: str = "home") -> Path:
        home = tmp_path / name
        home.mkdir()
        made.append(home)
        return home

    yield make
    leaked = {}
    for home in made:
        local_api.stop(home)
        leaked.update({pid: home for pid in ours(home)})
    for pid in leaked:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    assert not leaked, f"local API processes left running: {leaked}"


def test_the_first_command_starts_it_the_next_reuse_it_and_down_stops_it(homes):
    home = homes()
    for command in (("status",), ("serve", "--model", "nope", "--port", str(free_port()))):  # no Prefect
        proc = loopline(home, *command)
        proc.communicate(timeout=120)
        assert not (home / local_api.STATE_FILE).exists(), command
    assert finish(flow_command(home), code=2)["type"] == "UnknownDatasetError"
    state = json.loads((home / local_api.STATE_FILE).read_text())
    api, pid = state["prefect_api_url"], state["pids"][local_api.NAME]
    assert api.startswith("http://127.0.0.1:") and Path(state["prefect_home"]) == home / "prefect-local"
    assert len(flow_runs(api)) == 1  # the command's flow run went to it

    finish(flow_command(home), code=2)
    again = json.loads((home / local_api.STATE_FILE).read_text())
    assert again["pids"][local_api.NAME] == pid and again["prefect_api_url"] == api
    assert len(flow_runs(api)) == 2
    assert len(ours(home)) == 2  # one watchdog, one server

    down = finish(loopline(home, "down"))
    assert down["local_api"]["stopped"] and "local-api" in down["stopped"]
    assert ours(home) == [] and not (home / local_api.STATE_FILE).exists()


def test_concurrent_first_commands_share_one(homes):
    home = homes()
    procs = [flow_command(home) for _ in range(3)]
    for proc in procs:
        assert finish(proc, code=2)["type"] == "UnknownDatasetError"  # none timed out on its API
    state = json.loads((home / local_api.STATE_FILE).read_text())
    assert len(flow_runs(state["prefect_api_url"])) == 3
    assert len(ours(home)) == 2
    log = Path(state["logs"][local_api.NAME]).read_text()
    assert log.count("Check out the dashboard") == 1  # one server ever started


def test_nothing_starts_when_a_prefect_api_is_configured(homes):
    home, other = homes("home"), homes("other")
    finish(flow_command(other), code=2)
    api = json.loads((other / local_api.STATE_FILE).read_text())["prefect_api_url"]
    finish(flow_command(home, PREFECT_API_URL=api), code=2)  # the environment
    assert not (home / local_api.STATE_FILE).exists() and ours(home) == []
    assert len(flow_runs(api)) == 2
    profiles = home / "profiles.toml"  # a Prefect profile
    profiles.write_text(f'active = "mine"\n[profiles.mine]\nPREFECT_API_URL = "{api}"\n')
    code = "from flows import local_api; import sys; print(local_api.use(sys.argv[1]))"
    out = subprocess.run(
        [sys.executable, "-c", code, str(home)],
        cwd=REPO,
        env=env_for(home, PREFECT_PROFILES_PATH=str(profiles)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.stdout.strip() == "None", out.stderr[-2000:]
    assert not (home / local_api.STATE_FILE).exists() and ours(home) == []


def test_it_stops_when_idle_but_never_under_a_running_command(homes):
    home = homes()
    # a command that holds the API for 8 s, longer than the idle timeout
    code = "import sys, time; from flows import local_api; print(local_api.ensure(sys.argv[1]), flush=True); time.sleep(8)"
    user = subprocess.Popen(
        [sys.executable, "-c", code, str(home)],
        cwd=REPO,
        env=env_for(home, LOOPLINE_LOCAL_API_IDLE_SECONDS="2"),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        api = user.stdout.readline().strip()
        assert api.startswith("http://127.0.0.1:")
        started = time.monotonic()
        time.sleep(5)
        assert len(ours(home)) == 2  # idle for longer than 2 s, but a command holds it
        httpx.get(f"{api}/health", timeout=10).raise_for_status()
        assert user.wait(timeout=30) == 0
        assert wait_until(lambda: ours(home) == [], timeout=30), ours(home)
        assert time.monotonic() - started < 30
        assert not (home / local_api.STATE_FILE).exists()
        assert "idle for 2 s, stopped" in (home / "logs" / "local-api.log").read_text()
    finally:
        user.kill()
        user.wait()
