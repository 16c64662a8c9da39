"""`loopline up` / `down` edge cases for real (the whole stack with workers is tests/e2e/test_loop.py):
a port lost to another process, the Prefect server on a throwaway PostgreSQL cluster, URL handling."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from flows.stack import asyncpg_url, redact_url, up

pytestmark = pytest.mark.integration


def post(api: str, path: str, body: dict):
    response = httpx.post(api + path, json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def get(api: str, path: str):
    response = httpx.get(api + path, timeout=30)
    response.raise_for_status()
    return response.json()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def free_ports() -> dict[str, int]:
    """Not 4200/5000: another stack on this machine may hold (or race for) those."""
    ports = {}
    for key in ("prefect_port", "mlflow_port"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports[key] = s.getsockname()[1]
    return ports


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return False
    return True


def test_a_server_that_holds_the_port_is_not_taken_for_ours(tmp_path):
    """A race for 4200 lost to another process: `up` says so and cleans up; the other server lives."""
    from flows.stack import StackError

    ports = free_ports()
    other = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(ports["prefect_port"]), "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    home = tmp_path / "home"
    try:
        deadline = time.monotonic() + 30
        while not listening(ports["prefect_port"]) and time.monotonic() < deadline:
            time.sleep(0.2)
        with pytest.raises(StackError) as err:
            up(str(home), with_workers=False, deploy=False, startup_timeout_seconds=120, **ports)
        assert str(ports["prefect_port"]) in str(err.value) or "exited during start-up" in str(err.value)
        assert alive(other.pid)
        assert not (home / "stack.json").exists()
        assert not listening(ports["mlflow_port"])  # the MLflow server it had started is stopped again
    finally:
        other.terminate()
        other.wait(timeout=10)


def test_postgres_urls_are_checked_and_never_stored_with_their_password():
    assert (
        asyncpg_url("postgresql://u:secret@db:5432/prefect")
        == "postgresql+asyncpg://u:secret@db:5432/prefect"
    )
    assert (
        redact_url("postgresql+asyncpg://u:secret@db:5432/prefect")
        == "postgresql+asyncpg://u:***@db:5432/prefect"
    )
    from loopline.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        asyncpg_url("mysql://u:secret@db/x")
    assert "secret" not in str(err.value)


def test_the_idle_platform_is_three_lean_processes(tmp_path):
    """`up`'s footprint (issue 15): the MLflow server is one process (no job runner with its ~10 huey
    consumers, no `mlflow server` parent waiting on uvicorn), both pools' workers share one process, and
    neither the Prefect server nor the workers import Prefect's kubernetes/docker/dask collections. Was 12
    processes and ~2.9 GB RSS."""
    import psutil

    from flows.stack import down

    home = tmp_path / "home"
    os.environ["LOOPLINE_CACHE_DIR"] = str(tmp_path / "cache")  # no template yet: this start migrates
    try:
        stack = up(str(home), deploy=False, startup_timeout_seconds=150, **free_ports())
    finally:
        os.environ.pop("LOOPLINE_CACHE_DIR")
    assert stack["database_template"] == "saved"
    try:
        pids = stack["pids"]
        assert set(pids) == {"prefect-server", "mlflow-server", "worker-cpu", "worker-gpu"}
        assert pids["worker-cpu"] == pids["worker-gpu"]
        trees = {}
        for name, pid in pids.items():
            root = psutil.Process(pid)
            trees[name] = [root, *root.children(recursive=True)]
        assert len(trees["mlflow-server"]) == 1, [p.cmdline()[:4] for p in trees["mlflow-server"]]
        assert "uvicorn" in " ".join(trees["mlflow-server"][0].cmdline())  # exec'd: the recorded pid serves
        procs = {p.pid: p for tree in trees.values() for p in tree}
        assert len(procs) == 3
        # ~600 MB here; with Prefect's integration collections imported (server and worker) it was ~820 MB
        rss_mb = sum(p.memory_info().rss for p in procs.values()) / 2**20
        assert rss_mb < 750, f"{rss_mb:.0f} MB: " + ", ".join(
            f"{p.cmdline()[2:5]} {p.memory_info().rss / 2**20:.0f}" for p in procs.values()
        )
        assert httpx.get(stack["mlflow_tracking_uri"] + "/health", timeout=10).status_code == 200
    finally:
        stopped = down(str(home))
    assert sorted(stopped["stopped"]) == sorted(pids) and stopped["already_gone"] == []
    assert not any(alive(pid) for pid in pids.values())


def test_a_fresh_home_starts_from_the_migrated_template(tmp_path, monkeypatch):
    """The first fresh home's migrated Prefect database is kept (templates.py); the next fresh home starts
    from a copy and is a working API of its own (its pools, none of the first home's rows)."""
    from flows.stack import down, templates

    monkeypatch.setenv("LOOPLINE_CACHE_DIR", str(tmp_path / "cache"))
    first, second = tmp_path / "first", tmp_path / "second"
    stack = up(str(first), deploy=False, with_workers=False, startup_timeout_seconds=150, **free_ports())
    try:
        assert stack["database_template"] == "saved" and templates.template_path().is_file()
        post(stack["prefect_api_url"], "/flows/", {"name": "only-in-the-first-home"})
    finally:
        down(str(first))
    stack = up(str(second), deploy=False, with_workers=False, startup_timeout_seconds=150, **free_ports())
    try:
        api = stack["prefect_api_url"]
        assert stack["database_template"] == "seeded"
        assert {p["name"] for p in post(api, "/work_pools/filter", {})} >= {"cpu", "gpu"}
        assert [f["name"] for f in post(api, "/flows/filter", {})] == []  # nothing of the first home
        post(api, "/flows/", {"name": "second"})
    finally:
        down(str(second))
