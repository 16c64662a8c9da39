"""Deployment: make the running model server(s) serve the new champion, confirm it, or roll back.

Servers that the deployment stage starts are recorded in `$LOOPLINE_HOME/serving/servers.json`
(model, url, pid); servers started by hand can be named with `LOOPLINE_SERVING_URLS` (comma-separated).
The reload token lives in the environment (`LOOPLINE_RELOAD_TOKEN`); when unset, the deployment stage makes
one and keeps it in `$LOOPLINE_HOME/serving/reload.token` (mode 0600), never in logs or results.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loopline.config import ServingConfig
from loopline.errors import ConfigError, ModelError
from loopline.serving import RELOAD_TOKEN_ENV


@dataclass
class Server:
    model: str
    url: str
    pid: int | None = None


def _serving_dir(home: str) -> Path:
    path = Path(home) / "serving"
    path.mkdir(parents=True, exist_ok=True)
    return path


def reload_token(home: str) -> str:
    """The token /reload wants: from the environment, else this home's token file (created once)."""
    if os.environ.get(RELOAD_TOKEN_ENV):
        return os.environ[RELOAD_TOKEN_ENV]
    path = _serving_dir(home) / "reload.token"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def http_json(
    url: str, *, method: str = "GET", token: str | None = None, timeout: float = 5.0
) -> dict[str, Any]:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    if token:
        request.add_header("X-Reload-Token", token)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"{}")


def is_up(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def known_servers(home: str, model: str) -> list[Server]:
    """Servers of `model` that answer: recorded ones plus LOOPLINE_SERVING_URLS."""
    found: list[Server] = []
    record = _serving_dir(home) / "servers.json"
    if record.exists():
        for entry in json.loads(record.read_text() or "[]"):
            if entry["model"] == model:
                found.append(Server(**entry))
    found += [
        Server(model, u.strip().rstrip("/"))
        for u in os.environ.get("LOOPLINE_SERVING_URLS", "").split(",")
        if u.strip()
    ]
    alive, seen = [], set()
    for server in found:
        if server.url not in seen and is_up(server.url):
            alive.append(server)
            seen.add(server.url)
    return alive


def start_server(
    home: str,
    model: str,
    cfg: ServingConfig,
    *,
    tracking_uri: str | None,
    timeout: float = 120.0,
    env: dict[str, str] | None = None,
) -> Server:
    """Start `python -m loopline.serving` for `model` in the background and wait until it answers /ping.
    `env` goes on top of this process's environment: the lake the flow layer resolved (its variables carry
    secrets, so they travel there, never in argv)."""
    url = f"http://{cfg.host}:{cfg.port}"
    _refuse_taken_port(cfg.host, cfg.port, model)
    logs = _serving_dir(home) / f"server-{model}-{cfg.port}.log"
    env = {
        **os.environ,
        **(env or {}),
        RELOAD_TOKEN_ENV: reload_token(home),
        "LOOPLINE_HOME": str(Path(home).resolve()),
    }
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    cmd = [
        sys.executable,
        "-m",
        "loopline.serving",
        "--model",
        model,
        "--host",
        cfg.host,
        "--port",
        str(cfg.port),
        "--home",
        str(Path(home).resolve()),
    ]
    with open(logs, "ab") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, start_new_session=True)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise ModelError(
                f"the model server for {model!r} exited with {proc.returncode} before it answered"
                f"{_last_error(logs)}; its log: {logs}"
            )
        if is_up(url):
            break
        time.sleep(0.5)
    else:
        proc.terminate()
        raise TimeoutError(f"the model server did not answer {url}/ping within {timeout:.0f}s; see {logs}")
    server = Server(model, url, proc.pid)
    _record(home, server)
    return server


def _last_error(logs: Path) -> str:
    """The last ERROR line of a server log, for the one-line reason a start failed."""
    try:
        lines = [ln for ln in logs.read_text(errors="replace").splitlines() if ln.lower().startswith("error")]
    except OSError:
        return ""
    reasons = [ln for ln in lines if "startup failed" not in ln.lower()]
    return f" ({reasons[-1].split(':', 1)[-1].strip()})" if reasons else ""


def _refuse_taken_port(host: str, port: int, model: str) -> None:
    """A port something else holds is a clear ConfigError before we start: otherwise the other process's /ping
    would pass for ours, and the swap that follows would fail on a server that is not ours."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        if probe.connect_ex((host, port)) != 0:
            return
    holder = "another process"
    try:
        info = http_json(f"http://{host}:{port}/version", timeout=2)
        if info.get("model"):
            holder = f"a loopline model server for {info['model']!r} (v{info.get('version')})"
    except (urllib.error.URLError, OSError, ValueError):
        pass
    raise ConfigError(
        f"serving.port {port} on {host} is already in use by {holder}, so the model server for {model!r} "
        "cannot start there: set serving.port to a free port (--set serving.port=N), or stop what holds it"
    )


def stop_server(home: str, server: Server, timeout: float = 30.0) -> None:
    """SIGTERM (graceful: the inference log is flushed), then forget the server."""
    import signal

    if server.pid:
        try:
            os.killpg(server.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.time() + timeout
        while time.time() < deadline and _alive(server.pid):
            time.sleep(0.2)
    record = _serving_dir(home) / "servers.json"
    if record.exists():
        entries = [e for e in json.loads(record.read_text() or "[]") if e["url"] != server.url]
        record.write_text(json.dumps(entries))


def confirm_version(server: Server, version: int, timeout: float) -> dict[str, Any]:
    """Poll /version until the server serves `version` as champion; raise TimeoutError otherwise."""
    deadline = time.time() + timeout
    last: dict[str, Any] = {}
    while time.time() < deadline:
        try:
            last = http_json(f"{server.url}/version")
            if str(last.get("version")) == str(version):
                return last
        except (urllib.error.URLError, OSError, ValueError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{server.url} serves v{last.get('version')} after {timeout:.0f}s, not v{version}")


def reload(server: Server, token: str) -> dict[str, Any]:
    return http_json(f"{server.url}/reload", method="POST", token=token, timeout=120)


def _record(home: str, server: Server) -> None:
    record = _serving_dir(home) / "servers.json"
    entries = json.loads(record.read_text() or "[]") if record.exists() else []
    entries = [e for e in entries if e["url"] != server.url] + [server.__dict__]
    record.write_text(json.dumps(entries))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of ours counts as gone
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def champion_version(tracking_uri: str, model: str) -> int:
    """The version `@champion` points at now."""
    from loopline.packaging.registry import registry_client
    from loopline.release.champion import CHAMPION

    return int(registry_client(tracking_uri).get_model_version_by_alias(model, CHAMPION).version)


def stop_all_servers(home: str) -> list[str]:
    """Stop every model server the deployment stage started for this home (`loopline down`)."""
    record = _serving_dir(home) / "servers.json"
    entries = json.loads(record.read_text() or "[]") if record.exists() else []
    for entry in entries:
        stop_server(home, Server(**entry))
    return [e["url"] for e in entries]


def previous_champion(tracking_uri: str, model: str) -> int | None:
    """The champion a rollback would go back to, or None when `@champion` is the first."""
    from loopline.packaging.registry import registry_client
    from loopline.release.champion import read_state, reconcile

    client = registry_client(tracking_uri)
    state = reconcile(client, model, read_state(client, model))
    return state.stack[-2] if len(state.stack) > 1 else None
