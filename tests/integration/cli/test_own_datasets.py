"""The whole CLI on datasets that are not the demo, as a new user meets it: `loopline init` drafts each
contract from a sample, then every command works by the dataset's or the model's name alone (the lake
remembers the contract). Binary (breast cancer) and multiclass (wine) go through every command;
regression (diabetes) through train and promote. Commands run through the real Typer app against the
session's Prefect server; `serve` and one `status` run as separate processes, as users start them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from tests.cli_support import TINY
from tests.conftest import free_port
from tests.datasets import frame, write_dataset

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[3]


def cli(*args: str, code: int = 0) -> dict:
    """Run one command through the real app; its last line is the JSON result."""
    from flows.cli import app

    result = CliRunner().invoke(app, [*args, "--json"], catch_exceptions=False)
    assert result.exit_code == code, result.output[-3000:]
    assert "Traceback" not in result.output
    return json.loads(result.output.strip().splitlines()[-1])


@pytest.fixture
def workdir(prefect_api, home, tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)  # contracts/<D>.yaml land here, as in a user's project
    return tmp_path


@pytest.mark.parametrize("name", ["cancer", "wine"])
def test_every_command_on_a_dataset_of_your_own(name, workdir, home):
    sample = write_dataset(name, workdir / "data")
    drafted = cli("init", "--from", str(sample), "--label", "target")
    contract = Path(drafted["out"])
    assert contract == Path("contracts") / f"{name}.yaml" and contract.is_file()

    ingested = cli("ingest", "--contract", str(contract), "--source", str(sample))
    assert ingested["accepted"] and ingested["rows_quarantined"] == 0 and ingested["contract_version"] == 1
    # from here on the dataset's name is enough: the contract comes from the lake
    contract.unlink()
    built = cli("features", "--dataset", name)
    assert built["dataset"] == name and built["rows_added"] == len(frame(name))
    v1 = cli("train", "--dataset", name, *TINY)
    assert v1["model_name"] == name and v1["model_version"] == "1"  # the model is named after the dataset
    evaluated = cli("evaluate", "--model", name)
    assert evaluated["candidate_version"] == 1 and evaluated["champion_version"] is None
    promoted = cli("promote", "--model", name, *TINY)
    assert promoted["promoted"] and promoted["champion_version"] == 1
    drift = cli("drift", "--model", name, "--current", str(sample))
    assert (
        drift["model_version"] == "1"
        and drift["drift_detected"] is False
        and drift["n_current"] == len(frame(name))
    )
    if name == "wine":  # a second champion, then back
        cli("train", "--dataset", name, *TINY, "--set", "training.seed=1")
        cli("promote", "--model", name, *TINY, "--set", "evaluation.min_improvement=-1")
        rolled = cli("rollback", "--model", name)
        assert rolled["champion_version"] == 1
    _serve_and_score(name, home, sample)

    status = subprocess.run(
        [sys.executable, "-m", "flows.cli", "status", "--dataset", name, "--json"],
        capture_output=True, text=True, cwd=workdir, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120,
    )  # fmt: skip
    assert status.returncode == 0, status.stderr[-2000:]
    info = json.loads(status.stdout.strip().splitlines()[-1])
    assert info["datasets"][name]["contract"]["version"] == 1
    assert info["models"][name]["champion_version"] == 1


def test_regression_trains_and_promotes(workdir):
    sample = write_dataset("diabetes", workdir / "data")
    cli("init", "--from", str(sample), "--label", "target", "--out", "diabetes.yaml")
    cli("ingest", "--contract", "diabetes.yaml", "--source", str(sample))
    cli("features", "--dataset", "diabetes")
    trained = cli("train", "--dataset", "diabetes", *TINY)
    promoted = cli("promote", "--model", "diabetes", *TINY)
    assert trained["model_version"] == "1" and promoted["promoted"]
    assert promoted["primary_metric"] == "rmse"


def test_an_unknown_dataset_or_model_names_what_the_lake_knows(workdir):
    sample = write_dataset("wine", workdir / "data", rows=60)
    cli("init", "--from", str(sample), "--label", "target")
    cli("ingest", "--contract", "contracts/wine.yaml", "--source", str(sample))
    error = cli("features", "--dataset", "whine", code=2)
    assert "'whine'" in error["error"] and "'wine'" in error["error"]
    early = cli("train", "--dataset", "wine", code=2)  # a stage before its input exists: a usage error
    assert "has no features yet" in early["error"] and "loopline features --dataset wine" in early["error"]


def _serve_and_score(name: str, home: Path, sample: Path) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    server = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "serve", "--model", name, "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=home.parent,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            time.sleep(0.5)
        rows = frame(name, rows=5).drop(columns=["target"])
        body = {"dataframe_records": json.loads(rows.to_json(orient="records"))}
        answer = httpx.post(f"{url}/invocations", json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["predictions"]) == 5
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_run_takes_a_contract_and_a_source(workdir):
    """`loopline run --contract F --source S`: the whole loop on a dataset of one's own, in one command."""
    sample = write_dataset("wine", workdir / "data")
    cli("init", "--from", str(sample), "--label", "target")
    result = cli(
        "run",
        "--contract",
        "contracts/wine.yaml",
        "--source",
        str(sample),
        *TINY,
        "--set",
        "serving.deploy=false",
    )
    assert result["ingest"][0]["dataset"] == "wine" and result["ingest"][0]["accepted"]
    assert result["train"]["model_name"] == "wine" and result["champion_version"] == 1
