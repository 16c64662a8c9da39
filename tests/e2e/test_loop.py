"""The closed loop on a real stack: `up` starts `prefect server start`, `mlflow server` and a process
worker per pool and deploys prefect.yaml; a champion is trained and promoted; a shifted batch lands;
the drift flow detects it and emits `loopline.drift.detected`; the `retrain` deployment's run (cpu
pool) trains on the `gpu` pool, evaluates and promotes the new version. Everything is asserted through
the Prefect API and MLflow. A later burst of drift events starts nothing (cooldown). `up` is idempotent;
`down` stops what `up` started, and nothing else (not even a process that took over a recorded pid).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import yaml

pytestmark = pytest.mark.e2e

TINY = {
    "synthetic": {"rows": 2000},
    "training": {
        "max_steps": 20,
        "hidden_sizes": [16],
        "batch_size": 256,
        "eval_every_steps": 20,
        "checkpoint_every_steps": 20,
    },
    # a lateral move is enough here: the test is about the loop, not about beating the champion
    "evaluation": {"bootstrap_samples": 50, "min_improvement": -1.0, "max_slice_regression": None},
    # ingest events must not retrain in this test: only the drift event should
    "retrain": {"min_new_rows": 1_000_000, "cooldown_hours": 5},
}
SHIFTED = [f"f{i:02d}" for i in range(24)]  # 24 of 30 numeric features: over the 0.5 share threshold


def api(stack: dict, path: str, body: dict) -> list | dict:
    """Raw HTTP with every paging field set (the 3.8.8 client's nulls are a 422 on this server)."""
    response = httpx.post(stack["prefect_api_url"] + path, json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def flow_runs(stack: dict, deployment: str) -> list[dict]:
    flow_name, name = deployment.split("/")
    deps = api(
        stack, "/deployments/filter", {"deployments": {"name": {"any_": [name]}}, "limit": 10, "offset": 0}
    )
    ids = [d["id"] for d in deps]
    body = {
        "deployments": {"id": {"any_": ids}},
        "sort": "EXPECTED_START_TIME_ASC",
        "limit": 200,
        "offset": 0,
    }
    return api(stack, "/flow_runs/filter", body)


def wait_for(predicate, timeout_s: float, what: str, poll_s: float = 1.0):
    deadline = time.monotonic() + timeout_s
    stalls = 0
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except httpx.TimeoutException:
            # the SQLite-backed server can hold its write lock for up to its 60 s busy timeout (seen in CI's
            # server log: "database is locked" for 60 s); a slow answer is not the answer, the deadline still holds
            stalls += 1
            continue
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(
        f"timed out after {timeout_s:.0f} s waiting for {what} ({stalls} API reads timed out)"
    )


def drift_runs(stack):
    return [r for r in flow_runs(stack, "retrain/retrain") if r["parameters"].get("reason") == "drift"]


def test_drift_on_a_shifted_batch_retrains_through_the_deployments(tmp_path, monkeypatch):
    from mlflow import MlflowClient
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.stack import down, read_stack, up
    from loopline.config import load_config

    home = tmp_path / "home"
    config_file = tmp_path / "loopline.yaml"
    # a free serving port, not 8080: `make demo` before `make test` leaves its model server there
    config_file.write_text(yaml.safe_dump({**TINY, "serving": {"port": _free_port()}}))
    monkeypatch.setenv("LOOPLINE_HOME", str(home))
    monkeypatch.delenv("LOOPLINE_LAKE_URI", raising=False)

    # free ports, not 4200/5000: another stack on this machine may hold (or race for) those
    ports = {"prefect_port": _free_port(), "mlflow_port": _free_port()}
    stack = up(str(home), config_path=str(config_file), worker_poll_seconds=1, **ports)
    bystander = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True
    )
    try:
        assert read_stack(home)["pids"] == stack["pids"]
        _assert_the_stack_is_bootstrapped(stack, home)
        again = up(str(home))  # idempotent: a second `up` reports the running stack
        assert again["already_running"] and again["pids"] == stack["pids"]
        monkeypatch.setenv("MLFLOW_TRACKING_URI", stack["mlflow_tracking_uri"])
        cfg = load_config(config_file, [f"home={home}"])
        with temporary_settings(updates={PREFECT_API_URL: stack["prefect_api_url"]}):
            v1 = _train_a_champion(cfg, stack)
            report = _land_a_shifted_batch_and_detect_drift(cfg, stack)
            _drain_prefect_queues()
        assert report["drift_detected"] and report["event_emitted"]
        assert set(SHIFTED[:20]) <= set(report["drifted_features"])

        # the event started exactly one retrain run, which completed (not skipped) ...
        (run,) = wait_for(
            lambda: [
                r for r in drift_runs(stack) if r["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED")
            ],
            300,
            "the drift-triggered retrain run to finish",
        )
        assert run["state"]["name"] == "Completed", run["state"]
        assert run["parameters"]["model"] == "demo"
        assert run["parameters"]["event_payload"]["drift_share"] == pytest.approx(report["drift_share"])
        # ... ran its stages as subflows (promotion, then the deploy step: no model server runs here) ...
        children = api(
            stack,
            "/flow_runs/filter",
            {"flow_runs": {"parent_flow_run_id": {"any_": [run["id"]]}}, "limit": 50, "offset": 0},
        )
        names = {c["flow_id"]: c for c in children}
        flow_names = {
            f["id"]: f["name"]
            for f in api(
                stack, "/flows/filter", {"flows": {"id": {"any_": list(names)}}, "limit": 50, "offset": 0}
            )
        }
        assert {"features", "train", "promotion", "deployment"} <= {
            flow_names[c["flow_id"]] for c in children
        }
        assert all(c["state"]["type"] == "COMPLETED" for c in children)
        # ... and trained on the gpu pool through the train deployment, as its child
        trains = [r for r in flow_runs(stack, "train/train") if r["parent_task_run_id"]]
        assert trains and all(r["state"]["type"] == "COMPLETED" for r in trains)
        assert trains[-1]["work_pool_name"] == "gpu"

        # MLflow: a new version, evaluated against v1 by the promotion flow
        client = MlflowClient(stack["mlflow_tracking_uri"])
        versions = sorted(int(v.version) for v in client.search_model_versions("name='demo'"))
        assert versions[-1] > v1
        new = client.get_model_version("demo", str(versions[-1]))
        assert "loopline.last_decision" in new.tags
        decisions = client.search_runs(
            [client.get_experiment_by_name("loopline-demo").experiment_id],
            filter_string=f"tags.`loopline.candidate_version` = '{versions[-1]}'",
        )
        assert decisions and decisions[0].data.tags["loopline.kind"] == "promotion"
        assert "candidate.roc_auc" in decisions[0].data.metrics
        assert client.get_model_version_by_alias("demo", "champion").version == str(versions[-1])

        # a burst of 5 more drift events inside the cooldown starts nothing
        _post_drift_events(stack, "demo", 5)
        time.sleep(8)
        assert len(drift_runs(stack)) == 1

        # the Prefect UI as a new user meets it: the lifecycle deployment's run form, a dataset of one's own
        _run_the_lifecycle_from_the_ui(stack, tmp_path)
        _a_user_error_on_a_worker_is_logged_without_a_traceback(stack, tmp_path)
        # a pid in stack.json that now belongs to another process (its start time differs) is not ours
        state = read_stack(home)
        state["processes"].append(
            {"name": "impostor", "pid": bystander.pid, "start_time": 1, "log": "/dev/null"}
        )
        (home / "stack.json").write_text(json.dumps(state))
    finally:
        from loopline.release.deploy import stop_all_servers

        stop_all_servers(str(home))  # the model server the UI's lifecycle run started
        stopped = down(str(home))
        alive_after = _alive(bystander.pid)
        bystander.terminate()
        bystander.wait(timeout=10)
    assert set(stopped["stopped"]) == set(stack["pids"]) and stopped["already_gone"] == ["impostor"]
    assert alive_after  # `down` left the process that is not its own alone
    assert not (home / "stack.json").exists()
    for pid in stack["pids"].values():
        assert not _alive(pid)
    assert down(str(home))["stopped"] == []  # nothing left to stop


CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip


def _run_the_lifecycle_from_the_ui(stack: dict, tmp_path: Path) -> None:
    """In a real browser (Debian's Chromium driven by Playwright): open the lifecycle deployment's run
    form, type a contract and a source of a non-demo dataset (wine, contract drafted by `loopline init`),
    submit, and the run completes on the cpu worker; the ingest event's `features` run builds that
    dataset (the trigger passes the event's dataset, not the platform config's)."""
    import shutil

    from loopline.data.draft import draft_contract, write_draft
    from tests.datasets import write_dataset

    chromium = shutil.which("chromium")
    if chromium is None:
        if os.environ.get("CI") == "true":
            pytest.fail("Chromium is needed for the Prefect UI test: apt-get install -y chromium")
        pytest.skip("no Chromium here (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    sample = write_dataset("wine", tmp_path / "landing-wine")
    contract = write_draft(draft_contract(sample, label="target"), tmp_path / "wine.yaml")
    ui = stack["prefect_api_url"].removesuffix("/api")
    deployment = httpx.get(
        f"{stack['prefect_api_url']}/deployments/name/lifecycle/lifecycle", timeout=30
    ).json()
    features_before = len(flow_runs(stack, "features/features"))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            # the SQLite-backed server can stall writes for its 60 s busy timeout (wait_for above): the page
            # must outwait one such stall, as a user would
            page.set_default_timeout(150_000)
            page.goto(f"{ui}/deployments/deployment/{deployment['id']}/run", wait_until="networkidle")
            # the few parameters people change are plain fields, not a config toggle that defaults to None
            page.locator("label", has_text="contract").locator("xpath=following::textarea[1]").fill(
                str(contract)
            )
            page.locator("label", has_text="source").locator("xpath=following::textarea[1]").fill(str(sample))
            # a busy SQLite-backed server answers a write that lost SQLite's lock race with 503 (Prefect's
            # retryable "database is locked", which it does not log); the UI shows "Oops. Something went
            # wrong." and the user submits again (with the keyboard: the error toast covers the button)
            submit = page.get_by_role("button", name="Submit")
            statuses = []
            for attempt in range(3):
                with page.expect_response(
                    lambda r: r.url.endswith("/create_flow_run") and r.request.method == "POST"
                ) as answer:
                    if attempt == 0:
                        submit.click()
                    else:
                        submit.focus()
                        page.keyboard.press("Enter")
                statuses.append(answer.value.status)
                if answer.value.status != 503:
                    break
            assert statuses[-1] < 300, f"the run form's submissions were answered {statuses}"
            page.wait_for_url("**tab=Runs**", timeout=150_000)
        finally:
            browser.close()
    final = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
    (run,) = wait_for(
        lambda: [
            r for r in flow_runs(stack, "lifecycle/lifecycle")
            if r["parameters"].get("contract") == str(contract) and r["state"]["type"] in final
        ],
        420,
        "the lifecycle run submitted from the UI to finish",
    )  # fmt: skip
    assert run["state"]["type"] == "COMPLETED", run["state"]
    assert run["parameters"]["source"] == str(sample) and run["work_pool_name"] == "cpu"
    wine_features = wait_for(
        lambda: [
            r for r in flow_runs(stack, "features/features")[features_before:]
            if r["parameters"].get("dataset") == "wine" and r["state"]["type"] in final
        ],
        120,
        "the features run started by wine's ingest event",
    )  # fmt: skip
    assert all(r["state"]["type"] == "COMPLETED" for r in wine_features)


def _a_user_error_on_a_worker_is_logged_without_a_traceback(stack: dict, tmp_path: Path) -> None:
    """A lifecycle run with a source that does not exist, run by the cpu worker as one submitted from the UI:
    it fails, and its logs in the Prefect API say why in one line each, with no traceback (a user's error;
    the CLI path drops them from the console, a worker's flow run strips them: flows/console.py)."""
    deployment = httpx.get(
        f"{stack['prefect_api_url']}/deployments/name/lifecycle/lifecycle", timeout=30
    ).json()
    missing = str(tmp_path / "no-such-source.csv")
    created = httpx.post(
        f"{stack['prefect_api_url']}/deployments/{deployment['id']}/create_flow_run",
        json={"parameters": {"source": missing}},
        timeout=30,
    )
    created.raise_for_status()
    run_id = created.json()["id"]
    final = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
    (run,) = wait_for(
        lambda: [r for r in flow_runs(stack, "lifecycle/lifecycle") if r["id"] == run_id and r["state"]["type"] in final],
        300,
        "the lifecycle run with a missing source to end",
    )  # fmt: skip
    assert run["state"]["type"] == "FAILED" and "no such file" in run["state"]["message"], run["state"]
    logs = wait_for(
        lambda: [
            line["message"]
            for line in api(stack, "/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200, "offset": 0})
            if line["level"] >= 40
        ],
        60,
        "the failed run's error logs",
    )  # fmt: skip
    assert any("no such file" in m for m in logs), logs
    assert not any("Traceback" in m for m in logs), "\n".join(logs)


def _assert_the_stack_is_bootstrapped(stack: dict, home: Path) -> None:
    """Servers, pools, the gpu limit, the block type, and prefect.yaml deployed with its schedules and triggers."""
    assert stack["prefect_api_url"].startswith("http://127.0.0.1:")
    assert httpx.get(stack["mlflow_tracking_uri"] + "/health", timeout=10).status_code == 200
    assert stack["database"] == f"sqlite:///{home.resolve() / 'prefect' / 'prefect.db'}"
    assert set(stack["pids"]) == {"prefect-server", "mlflow-server", "worker-cpu", "worker-gpu"}
    base = stack["prefect_api_url"]
    pools = {p["name"]: p["type"] for p in api(stack, "/work_pools/filter", {"limit": 50, "offset": 0})}
    assert pools["cpu"] == "process" and pools["gpu"] == "process"
    assert httpx.get(f"{base}/v2/concurrency_limits/gpu", timeout=10).json()["limit"] >= 1
    assert httpx.get(f"{base}/block_types/slug/loopline-lake-storage", timeout=10).status_code == 200
    for pool in ("cpu", "gpu"):
        workers = api(stack, f"/work_pools/{pool}/workers/filter", {"limit": 10, "offset": 0})
        assert any(w["status"] == "ONLINE" for w in workers)

    deployments = {d["name"]: d for d in api(stack, "/deployments/filter", {"limit": 50, "offset": 0})}
    assert {"lifecycle", "ingest", "features", "train", "drift-watch", "retrain"} <= set(deployments)
    assert (
        deployments["train"]["work_pool_name"] == "gpu" and deployments["retrain"]["work_pool_name"] == "cpu"
    )
    watch = deployments["drift-watch"]
    assert watch["parameters"] == {"all_models": True}
    assert watch["schedules"][0]["schedule"]["interval"] == 3600
    step = watch["pull_steps"][0]["prefect.deployments.steps.set_working_directory"]
    assert step["directory"] == str(Path(__file__).resolve().parents[2])  # resolved at deploy time
    automations = api(stack, "/automations/filter", {"limit": 50, "offset": 0})
    retrain_id = deployments["retrain"]["id"]
    owned = [a for a in automations if any(x.get("deployment_id") == retrain_id for x in a["actions"])]
    triggers = {tuple(a["trigger"]["expect"]): a["trigger"] for a in owned}
    drift = triggers[("loopline.drift.detected",)]
    assert drift["within"] == TINY["retrain"]["cooldown_hours"] * 3600  # from the config `up` was given
    assert drift["for_each"] == ["prefect.resource.id"] and drift["threshold"] == 1
    assert triggers[("loopline.data.ingested",)]["within"] == 0


def _wait_for_triggered_features(stack: dict, runs_before: int) -> None:
    """The ingest event starts the `features` deployment on the cpu worker; let it finish first (two
    features runs at once on a table that does not exist yet can leave it unreadable for a moment)."""
    final = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
    wait_for(
        lambda: (
            len(runs := flow_runs(stack, "features/features")) > runs_before
            and all(r["state"]["type"] in final for r in runs)
        ),
        120,
        "the features run the ingest event started",
    )


def _train_a_champion(cfg, stack: dict) -> int:
    from flows.features import features_flow
    from flows.ingest import ingest_flow
    from flows.promotion import promotion_flow
    from flows.training import train_flow

    ingest_flow(cfg)
    _wait_for_triggered_features(stack, 0)
    features = features_flow(cfg)
    trained = train_flow(cfg, dataset="demo", features_version=features["features_version"])
    promoted = promotion_flow(cfg, model="demo", version=int(trained["model_version"]))
    assert promoted["promoted"], promoted["reason"]
    return int(trained["model_version"])


def _land_a_shifted_batch_and_detect_drift(cfg, stack: dict) -> dict:
    from flows.drift import drift_flow
    from flows.ingest import ingest_flow

    shifted = cfg.model_copy(deep=True)
    shifted.synthetic.rows = 1500
    shifted.synthetic.seed = 7
    shifted.synthetic.id_offset = 1_000_000
    shifted.synthetic.drift_columns = SHIFTED
    shifted.synthetic.drift_mean_shift = 2.0
    before = len(flow_runs(stack, "features/features"))
    ingest_flow(shifted)
    _wait_for_triggered_features(stack, before)
    return drift_flow(cfg, model="demo", current="batch:latest")


def _drain_prefect_queues() -> None:
    """Send queued logs and events while the server is up (left for exit, they retry a dead server)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)


def _post_drift_events(stack: dict, model: str, n: int) -> None:
    now = datetime.now(UTC).isoformat()
    events = [
        {
            "id": str(uuid.uuid4()),
            "occurred": now,
            "event": "loopline.drift.detected",
            "resource": {"prefect.resource.id": f"loopline.model.{model}"},
            "payload": {"model": model, "drift_share": 0.9, "features": ["f00"]},
        }
        for _ in range(n)
    ]
    httpx.post(stack["prefect_api_url"] + "/events", json=events, timeout=30).raise_for_status()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
