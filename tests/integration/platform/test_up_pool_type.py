"""`loopline up --pool-type kubernetes` against a Prefect server of its own (the session server keeps its process
pools `cpu`/`gpu`): kubernetes pools with infra/work-pools' templates, the gpu limit, the block types, and
prefect.yaml deployed by `prefect deploy --all`, its pull step pointing into the image (tests/infra/test_work_pools.py
holds that applying the pools again changes nothing). A pool type Prefect has no template for is exit 2 before anything is contacted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest

from tests.cli_support import run_cli
from tests.conftest import free_port, wait_http

pytestmark = pytest.mark.integration


@pytest.fixture
def own_server(tmp_path):
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "ph"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_http(f"{url}/health", timeout=150)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_up_pool_type_kubernetes_sets_up_a_remote_server(own_server, tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", own_server)
    monkeypatch.delenv("LOOPLINE_PROJECT_DIR", raising=False)
    done = run_cli("up", "--pool-type", "kubernetes", "--json", home=tmp_path / "home", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads(done.stdout)
    assert info["work_pools"] == ["cpu", "gpu"] and info["concurrency_limits"]
    assert "train/train" in info["deployments"] and "retrain/retrain" in info["deployments"]

    def post(path, body):
        return httpx.post(own_server + path, json={"limit": 50, "offset": 0, **body}, timeout=30).json()

    pools = {p["name"]: p for p in post("/work_pools/filter", {})}
    assert {pools["cpu"]["type"], pools["gpu"]["type"]} == {"kubernetes"}
    gpu_vars = pools["gpu"]["base_job_template"]["variables"]["properties"]
    assert "gpu_limit" in gpu_vars  # the gpu template, not Prefect's default
    deployments = {d["name"]: d for d in post("/deployments/filter", {})}
    assert len(deployments) == len(info["deployments"])
    assert deployments["train"]["work_pool_name"] == "gpu"
    pull = deployments["train"]["pull_steps"][0]["prefect.deployments.steps.set_working_directory"]
    assert pull["directory"] == "/opt/loopline"  # the checkout in the loopline image
    automations = post("/automations/filter", {})
    assert len(automations) == 3  # features + 2 retrain triggers


def test_up_with_an_unknown_pool_type_is_exit_2(tmp_path):
    done = run_cli("up", "--pool-type", "nomad", home=tmp_path, timeout=120)
    assert done.returncode == 2 and "unknown pool type 'nomad'" in done.stderr
    assert "Traceback" not in done.stderr
