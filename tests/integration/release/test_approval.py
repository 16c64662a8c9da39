"""Human approval of a promotion through the Prefect API: the `promotion` flow pauses for an ApprovalInput,
the test resumes it with `resume_flow_run(..., run_input=...)` as the Prefect UI's form does.

Real components: a lake built by ingest + features, two versions trained and registered in a real MLflow
(SQLite), infra validation in a fresh process, the session's `prefect server`. The gate allows a lateral
move (min_improvement -1), so v2 passes it and the decision is the human's. Reject and timeout leave v1 the
champion, so they run first; approve promotes v2.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path

import pytest

from loopline.config import LifecycleConfig
from tests.serving_support import build_registered_model

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    home = tmp_path_factory.mktemp("approval-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOOPLINE_HOME", str(home))
        mp.delenv("LOOPLINE_LAKE_URI", raising=False)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
        built = build_registered_model(home, versions=2, rows=1500, max_steps=5)
        yield built


def config(registry, **rollout) -> LifecycleConfig:
    return LifecycleConfig(
        home=registry["home"],
        evaluation={"min_improvement": -1.0, "bootstrap_samples": 50, "min_slice_rows": 10_000},
        # 72 s: the paused run polls for the decision every second (pause_flow_run's poll_interval)
        rollout={"require_approval": True, "approval_timeout_hours": 0.02, **rollout},
    )


def run_paused(cfg: LifecycleConfig, model: str, version: int):
    """Start the promotion flow in a thread; wait until its run is PAUSED; (run id, thread, result box)."""
    from prefect import get_client

    from flows.promotion import promotion_flow

    name = f"approval-{uuid.uuid4().hex[:8]}"
    box: dict = {}

    def target() -> None:
        try:
            box["result"] = promotion_flow.with_options(flow_run_name=name)(cfg, model=model, version=version)
        except BaseException as exc:  # surfaced by the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline and "error" not in box:
            runs = [r for r in client.read_flow_runs() if r.name == name]
            if runs and runs[0].state and runs[0].state.is_paused():
                return runs[0].id, thread, box
            time.sleep(0.3)
    raise AssertionError(f"the promotion never paused: {box}")


def approvals(registry) -> list[dict]:
    from loopline.packaging.registry import registry_client
    from loopline.release.champion import read_history

    client = registry_client(registry["tracking_uri"])
    return [e for e in read_history(client, registry["model"]) if e["action"] == "approval"]


def champion(registry) -> int | None:
    from loopline.packaging.registry import alias_version, registry_client

    return alias_version(registry_client(registry["tracking_uri"]), registry["model"], "champion")


def test_no_decision_in_time_rejects(registry, prefect_api):
    model, before = registry["model"], champion(registry)
    # 0.0006 h: a 2 s wait
    run_id, thread, box = run_paused(
        config(registry, approval_timeout_hours=0.0006), model, int(registry["versions"][1])
    )
    thread.join(120)
    result = box.get("result")
    assert result is not None, box.get("error")
    assert not result["promoted"] and champion(registry) == before
    assert (
        result["approval"]["decision"] == "timeout"
        and approvals(registry)[-1]["approval"]["approver"] is None
    )


@pytest.mark.parametrize("approve", [False, True], ids=["reject", "approve"])
def test_the_approver_decides_through_the_prefect_api(registry, prefect_api, approve):
    from prefect.flow_runs import resume_flow_run

    model, before = registry["model"], champion(registry)
    assert before == int(registry["versions"][0])
    run_id, thread, box = run_paused(config(registry), model, int(registry["versions"][1]))
    assert champion(registry) == before  # nothing moves while a person decides
    resume_flow_run(
        run_id, run_input={"approve": approve, "approver": "ana", "comment": f"approve={approve}"}
    )
    thread.join(120)
    result = box.get("result")
    assert result is not None, box.get("error")
    entry = approvals(registry)[-1]
    assert entry["approval"]["approver"] == "ana" and entry["approval"]["comment"] == f"approve={approve}"
    assert entry["champion"] == before  # the record moves nothing itself
    if approve:
        assert result["promoted"] and champion(registry) == int(registry["versions"][1])
        assert entry["approval"]["decision"] == "approve"
    else:
        assert not result["promoted"] and champion(registry) == before
        assert entry["approval"]["decision"] == "reject" and result["approval"]["model_card_uri"]


# with LOOPLINE_UPDATE_DOCS=1 the UI test refreshes the README's picture of the approval form here
DOCS = Path(__file__).resolve().parents[3] / "docs"


@pytest.mark.e2e
def test_the_approver_decides_in_the_prefect_ui(registry, prefect_api, tmp_path):
    """In a real browser (Debian's Chromium driven by Playwright): open the paused run in the Prefect UI,
    press Resume, fill the ApprovalInput form (approve, approver, comment), submit; the run resumes, runs
    the gate again and promotes; the decision and its approver are in the registry history. Rolls out
    whichever version is not the champion, so it holds after the API tests or alone."""
    import shutil

    chromium = shutil.which("chromium")
    if chromium is None:
        if os.environ.get("CI") == "true":
            pytest.fail("Chromium is needed for the Prefect UI test: apt-get install -y chromium")
        pytest.skip("no Chromium here (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    from tests.e2e.test_loop import CHROMIUM_ARGS

    model, before = registry["model"], champion(registry)
    other = next(int(v) for v in registry["versions"] if int(v) != before)
    run_id, thread, box = run_paused(config(registry), model, other)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{prefect_api.removesuffix('/api')}/runs/flow-run/{run_id}", wait_until="networkidle")
            page.get_by_role("button", name="Resume").click()
            form = page.get_by_role("dialog")

            def field(label: str):  # one property of the form, by its exact label
                return form.locator(".schema-form-property").filter(has=page.get_by_text(label, exact=True))

            field("Approve (Optional)").get_by_role("switch").click()
            field("Approver").locator("textarea").fill("ana in the ui")
            field("Comment (Optional)").locator("textarea").fill("canary metrics look fine")
            assert form.get_by_role("switch").get_attribute("aria-checked") == "true"
            # the README's picture is refreshed on request only, so a test run leaves the tree clean
            shots = DOCS if os.environ.get("LOOPLINE_UPDATE_DOCS") == "1" else tmp_path
            page.screenshot(path=str(shots / "approval-form.png"))
            assert (shots / "approval-form.png").stat().st_size > 0
            form.get_by_role("button", name="Submit").click()
            thread.join(120)
        finally:
            browser.close()
    result = box.get("result")
    assert result is not None, box.get("error")
    assert result["promoted"] and champion(registry) == other, result["reason"]
    entry = approvals(registry)[-1]["approval"]
    assert (entry["decision"], entry["approver"], entry["comment"], entry["version"]) == (
        "approve",
        "ana in the ui",
        "canary metrics look fine",
        other,
    )


def test_the_lifecycle_hands_an_approval_to_the_promotion_deployment(registry, prefect_api):
    """With approval required the lifecycle does not wait for a person: the `promotion` deployment's own run
    (where the pause lives) is started with the model and version, and the lifecycle goes on."""
    from prefect import flow, get_client

    from flows.project import deploy_project
    from flows.stack import create_work_pools
    from tasks.approval import hand_off_promotion
    from tests.cli_support import deploy_env

    create_work_pools(prefect_api)
    assert deploy_project(deploy_env(prefect_api), only=["promotion"]) == ["promotion/promotion"]
    cfg = config(registry)
    try:

        @flow(name="lifecycle-hand-off")
        def lifecycle_step() -> dict:
            return hand_off_promotion(cfg, registry["model"], 2)

        handed = lifecycle_step()
        assert handed["awaiting_approval"] and not handed["promoted"]
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(handed["promotion_flow_run_id"])
            assert run.parameters["model"] == registry["model"] and run.parameters["version"] == 2
            assert run.parameters["config"]["rollout"]["require_approval"] is True
            assert run.parent_task_run_id is None  # its own flow run, not a subflow of the lifecycle
    finally:
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name("promotion/promotion")
            client.delete_deployment(deployment.id)  # its scheduled run goes with it; no worker picks it up
