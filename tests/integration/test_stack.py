"""`loopline up` / `down` for real: servers, pools, limits, blocks, deployments with schedules and
triggers; `up` is idempotent; `down` stops what `up` started and nothing else, even a reused pid.
With PostgreSQL installed, the Prefect server also runs on a throwaway Postgres cluster."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import yaml

from flows.stack import asyncpg_url, down, read_stack, redact_url, up

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


def test_up_deploys_the_project_is_idempotent_and_down_stops_only_its_own(tmp_path):
    home = tmp_path / "home"
    config = tmp_path / "loopline.yaml"
    config.write_text(yaml.safe_dump({"retrain": {"cooldown_hours": 2}}))
    # someone else's process, started before the stack: `down` must leave it alone
    bystander = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True
    )
    try:
        stack = up(str(home), config_path=str(config), with_workers=False, **free_ports())
        api = stack["prefect_api_url"]
        assert api.startswith("http://127.0.0.1:") and stack["mlflow_tracking_uri"].startswith(
            "http://127.0.0.1:"
        )
        assert get(api, "/health") is True
        assert httpx.get(stack["mlflow_tracking_uri"] + "/health", timeout=10).status_code == 200
        assert stack["database"] == f"sqlite:///{home.resolve() / 'prefect' / 'prefect.db'}"
        assert (home / "prefect" / "prefect.db").exists()
        assert json.loads((home / "stack.json").read_text())["pids"] == stack["pids"]
        assert set(stack["pids"]) == {"prefect-server", "mlflow-server"}

        # work pools, the gpu limit, the block type
        pools = {p["name"]: p["type"] for p in post(api, "/work_pools/filter", {"limit": 50, "offset": 0})}
        assert pools["cpu"] == "process" and pools["gpu"] == "process"
        gpu = get(api, "/v2/concurrency_limits/gpu")
        assert gpu["limit"] == stack["concurrency_limits"]["gpu"] >= 1
        assert get(api, "/block_types/slug/loopline-lake-storage")["slug"] == "loopline-lake-storage"

        # prefect.yaml: pools, schedules, parameters, and the retrain triggers with the configured cooldown
        deployments = {d["name"]: d for d in post(api, "/deployments/filter", {"limit": 50, "offset": 0})}
        assert {"lifecycle", "ingest", "features", "drift-watch", "retrain"} <= set(deployments)
        assert deployments["retrain"]["work_pool_name"] == "cpu"
        if "train" in deployments:
            assert deployments["train"]["work_pool_name"] == "gpu"
        watch = deployments["drift-watch"]
        assert watch["parameters"] == {"model": "demo", "skip_unknown_model": True}
        assert watch["schedules"][0]["schedule"]["interval"] == 3600
        assert watch["pull_steps"][0]["prefect.deployments.steps.set_working_directory"]["directory"] == str(
            Path(__file__).resolve().parents[2]
        )
        automations = post(api, "/automations/filter", {"limit": 50, "offset": 0})
        retrain_id = deployments["retrain"]["id"]
        owned = [a for a in automations if any(x.get("deployment_id") == retrain_id for x in a["actions"])]
        triggers = {tuple(a["trigger"]["expect"]): a["trigger"] for a in owned}
        assert triggers[("loopline.drift.detected",)]["within"] == 7200  # retrain.cooldown_hours: 2
        assert triggers[("loopline.drift.detected",)]["for_each"] == ["prefect.resource.id"]
        assert triggers[("loopline.data.ingested",)]["within"] == 0

        # idempotent: a second `up` reports the running stack
        again = up(str(home))
        assert again["already_running"] and again["pids"] == stack["pids"]

        # a pid in stack.json that now belongs to another process (start time differs) is not ours
        state = read_stack(home)
        state["processes"].append(
            {"name": "impostor", "pid": bystander.pid, "start_time": 1, "log": "/dev/null"}
        )
        (home / "stack.json").write_text(json.dumps(state))
        stopped = down(str(home))
        assert sorted(stopped["stopped"]) == ["mlflow-server", "prefect-server"]
        assert stopped["already_gone"] == ["impostor"]
        assert alive(bystander.pid)
        assert not (home / "stack.json").exists()
        for pid in stack["pids"].values():
            assert not alive(pid)
        for url in (api, stack["mlflow_tracking_uri"]):
            assert not listening(int(url.split(":")[2].split("/")[0]))
        assert down(str(home))["stopped"] == []  # nothing left to stop
    finally:
        bystander.terminate()
        bystander.wait(timeout=10)
        down(str(home))


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


@pytest.fixture
def postgres():
    """A throwaway PostgreSQL cluster on a free port (run as the `postgres` user when we are root)."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL is not installed")
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root = Path(tempfile.mkdtemp(prefix="loopline-pg-"))
    if as_pg:
        shutil.chown(root, "postgres")
    data = root / "data"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pwfile = root / "pw"
    pwfile.write_text("s3cret\n")
    if as_pg:
        shutil.chown(pwfile, "postgres")
    run = dict(check=True, capture_output=True, timeout=120)
    subprocess.run(
        [*as_pg, initdb, "-D", str(data), "-U", "loopline", "--pwfile", str(pwfile), "-A", "scram-sha-256"],
        **run,
    )
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
    subprocess.run(
        [*as_pg, pg_ctl, "-D", str(data), "-o", opts, "-l", str(root / "pg.log"), "-w", "start"], **run
    )
    try:
        yield f"postgresql://loopline:s3cret@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_pg, pg_ctl, "-D", str(data), "-m", "fast", "stop"], capture_output=True, timeout=60
        )
        shutil.rmtree(root, ignore_errors=True)


def test_up_runs_the_prefect_server_on_postgres(tmp_path, postgres):
    home = tmp_path / "home"
    try:
        stack = up(str(home), postgres_url=postgres, with_workers=False, deploy=False, **free_ports())
        assert "s3cret" not in stack["database"] and "s3cret" not in (home / "stack.json").read_text()
        assert not (home / "prefect" / "prefect.db").exists()  # nothing went to SQLite
        api = stack["prefect_api_url"]
        post(api, "/variables/", {"name": "loopline_pg_check", "value": "here"})
    finally:
        down(str(home))
    # the server wrote to Postgres: read its tables directly
    port = postgres.rsplit(":", 1)[1].split("/")[0]
    rows = subprocess.run(
        [shutil.which("psql") or "psql", "-h", "127.0.0.1", "-p", port, "-U", "loopline", "-d", "postgres", "-tAc",
         "select name from work_pool union all select name from variable order by 1"],
        env={**os.environ, "PGPASSWORD": "s3cret"}, capture_output=True, text=True, timeout=60, check=True,
    ).stdout.split()  # fmt: skip
    assert rows == ["cpu", "gpu", "loopline_pg_check"]
