"""Shared fixtures: a quiet environment, a real Prefect API for the session, a per-test LOOPLINE_HOME."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# telemetry off and quiet logs for every test, before anything imports prefect/mlflow/gx
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 120.0) -> None:
    import urllib.request

    deadline = time.time() + timeout
    last: Exception | None = None
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status < 500:
                    return
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout}s: {last}")


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """A real `prefect server start` for the whole session; PREFECT_API_URL points at it (also for subprocesses)."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    # the UI it serves (at the API URL without /api) calls this API, not the default port 4200
    env["PREFECT_UI_API_URL"] = f"http://127.0.0.1:{port}/api"
    # started the way `loopline up` starts it (flows.stack.launch): with the collector off its event loop,
    # without which a SQLite-backed server can stall 60 s on "database is locked" (launch.py)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flows.stack.launch",
            "prefect",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(home / "server.log", "wb"),
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_http(f"{url}/health", timeout=150)
    except TimeoutError:
        proc.terminate()
        raise
    old = {k: os.environ.get(k) for k in ("PREFECT_API_URL", "PREFECT_HOME")}
    os.environ["PREFECT_API_URL"] = url
    os.environ["PREFECT_HOME"] = str(home)
    yield url
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fresh LOOPLINE_HOME (lake, mlflow.db, data_docs) per test."""
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("LOOPLINE_HOME", str(h))
    monkeypatch.delenv("LOOPLINE_LAKE_URI", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{h / 'mlflow.db'}")
    return h


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory):
    """A real S3 endpoint (`moto_server`) for the session; yields its URL and test credentials."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=open(log, "wb"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url, timeout=60)
    except TimeoutError:
        proc.terminate()
        raise
    yield {
        "endpoint_url": url,
        "region": "us-east-1",
        "access_key_id": "testing",
        "secret_access_key": "testing",
    }
    proc.terminate()
    proc.wait(timeout=10)


@contextlib.contextmanager
def postgres_cluster():
    """A throwaway PostgreSQL cluster on a free port with a random password (run as the `postgres` user when
    we are root); yields its URL. Without PostgreSQL it skips, except under CI=true, where it fails."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not (initdb and pg_ctl):
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL (initdb, pg_ctl) is not installed: .ci/run installs it")
        pytest.skip("PostgreSQL is not installed")
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root = Path(tempfile.mkdtemp(prefix="loopline-pg-"))
    if as_pg:
        shutil.chown(root, "postgres")
    data = root / "data"
    port = free_port()
    password = "pg-" + secrets.token_hex(12)
    pwfile = root / "pw"
    pwfile.write_text(password + "\n")
    if as_pg:
        shutil.chown(pwfile, "postgres")
    run = dict(check=True, capture_output=True, timeout=120)
    subprocess.run(
        [*as_pg, initdb, "-D", str(data), "-U", "loopline", "--pwfile", str(pwfile), "-A", "scram-sha-256"],
        **run,
    )
    pwfile.unlink()
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
    subprocess.run(
        [*as_pg, pg_ctl, "-D", str(data), "-o", opts, "-l", str(root / "pg.log"), "-w", "start"], **run
    )
    try:
        yield f"postgresql://loopline:{password}@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_pg, pg_ctl, "-D", str(data), "-m", "fast", "stop"], capture_output=True, timeout=60
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres():
    with postgres_cluster() as url:
        yield url
