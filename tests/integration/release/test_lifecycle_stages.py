"""The lifecycle as one flow run: every stage shows in the Prefect API's run tree (its named task runs;
promotion as its own flow run), a failed stage can be run again, and the stages that had finished come back
from their records (tasks/stage_cache.py) without redoing their work. No task run carries a tag: Prefect
3.8.8 takes a tag-concurrency lease per tagged task run (~1.3 s each here)."""

from __future__ import annotations

import socket

import httpx

from loopline.config import load_config
from loopline.release import deploy
from tests.serving_support import free_port

SMALL = [
    "synthetic.rows=1500",
    "synthetic.seed=0",
    "synthetic.id_offset=0",
    "training.max_steps=20",
    "evaluation.bootstrap_samples=50",
    "serving.poll_seconds=3600",
]


def _post(api: str, path: str, body: dict) -> list[dict]:
    response = httpx.post(f"{api}{path}", json={"limit": 200, "offset": 0, **body}, timeout=30)
    response.raise_for_status()
    return response.json()


def _tree(api: str, run_id: str) -> tuple[list[dict], list[dict]]:
    """The run's child flow runs and its task runs."""
    children = _post(api, "/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [run_id]}}})
    tasks = _post(api, "/task_runs/filter", {"task_runs": {"flow_run_id": {"any_": [run_id]}}})
    return children, tasks


def _names(tasks: list[dict]) -> set[str]:
    return {t["name"].rsplit("-", 1)[0] for t in tasks}


def test_stages_show_in_the_run_tree_and_a_failed_stage_runs_again(prefect_api, home):
    from flows.lifecycle import lifecycle_flow

    port = free_port()
    cfg = load_config(overrides=[*SMALL, f"home={home}", f"serving.port={port}"])
    try:
        # the deploy stage fails: something else holds the serving port
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", port))
            holder.listen()
            failed = lifecycle_flow(config=cfg, return_state=True)
        assert failed.is_failed() and "already in use" in failed.message
        children, tasks = _tree(prefect_api, str(failed.state_details.flow_run_id))
        # every stage's steps are task runs of the lifecycle run (drift: no champion yet, skipped from a
        # registry query without a task run), none tagged
        assert {"synthesise-demo-source", "list-source-files", "ingest-batch"} <= _names(tasks)  # ingest
        assert {"build-features", "train demo"} <= _names(tasks)  # features, train
        assert {"read-champion", "find-model-servers", "start-model-server"} <= _names(tasks)  # deploy
        assert [t["name"] for t in tasks if t["tags"]] == []
        # no task input names a flow run: the UI of Prefect 3.8.8 cannot parse one, and shows no task runs
        # at all in the run's Task Runs tab (PrefectHQ/prefect#18680)
        linked = [(t["name"], k) for t in tasks for k, v in t["task_inputs"].items() for i in v if i.get("input_type") == "flow_run"]  # fmt: skip
        assert linked == []
        (promotion,) = children  # the only subflow: promotion keeps its own flow run
        assert promotion["state"]["type"] == "COMPLETED" and promotion["name"]
        _, promotion_tasks = _tree(prefect_api, promotion["id"])
        assert promotion_tasks and [t["name"] for t in promotion_tasks if t["tags"]] == []
        start = next(t for t in tasks if t["name"].startswith("start-model-server"))
        assert start["state"]["type"] == "FAILED"

        # the port is free again: the same run again deploys; the stages that finished are record hits
        again = lifecycle_flow(config=cfg, return_state=True)
        assert again.is_completed(), again.message
        result = again.result()
        assert result["ingest"][0]["duplicate_batch"] and not result["ingest"][0]["event_emitted"]
        assert result["train"]["cached"] and result["train"]["model_version"] == "1"
        assert result["promote"]["cached"] and result["champion_version"] == 1
        assert result["deploy"]["started"] and result["deploy"]["servers"][0]["version"] == "1"
        children, tasks = _tree(prefect_api, str(again.state_details.flow_run_id))
        assert children == []  # the recorded decision: no promotion flow run
        assert {"promote demo v1", "train demo"} <= {t["name"] for t in tasks}
        assert all(t["state"]["type"] == "COMPLETED" for t in tasks)
    finally:
        deploy.stop_all_servers(str(home))
