"""The training task on a real Prefect API: a retry resumes from the checkpoint instead of restarting,
the concurrency slot is created, taken and given back, and the progress artifact is there."""

from __future__ import annotations

import pytest
import torch

from loopline.config import LifecycleConfig
from loopline.storage.lake import Lake
from loopline.train.checkpoint import CheckpointStore
from loopline.train.sample_data import demo_features

pytestmark = pytest.mark.integration


@pytest.fixture
def env(prefect_api, home, monkeypatch):
    monkeypatch.setenv("LOOPLINE_CODE_VERSION", "prefect-test")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    lake = Lake.from_env(str(home))
    demo_features(lake, 1200)
    yield {"home": home, "lake": lake, "api": prefect_api}
    torch.set_num_threads(previous)


def test_a_task_retry_resumes_from_the_checkpoint(env, monkeypatch):
    from prefect import flow
    from prefect.client.orchestration import get_client

    from flows.training import train_flow
    from tasks.training import train_model

    real_save = CheckpointStore.save
    crashes = []

    def save_then_crash_once(self, state):
        # the first attempt dies while writing its checkpoint at step 30 (after the one at step 20)
        if state["step"] == 30 and not crashes:
            crashes.append(state["step"])
            raise RuntimeError("injected crash: node lost")
        return real_save(self, state)

    monkeypatch.setattr(CheckpointStore, "save", save_then_crash_once)
    slot = "gpu-test-retry"
    cfg = LifecycleConfig(
        home=str(env["home"]),
        model_name="retry_demo",
        training={
            "max_steps": 60,
            "batch_size": 32,
            "checkpoint_every_steps": 10,
            "gpu_slot": slot,
            "gpu_slot_on_cpu": True,
        },
    )

    @flow
    def train_with_quick_retries():
        return train_model.with_options(retry_delay_seconds=0)(cfg, "demo")

    result = train_with_quick_retries()
    assert crashes == [30]
    assert result["resumed_from_step"] == 20 and result["steps"] == 60
    assert result["model_name"] == "retry_demo" and result["model_version"] == "1"

    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(slot)
        assert limit.limit >= 1 and limit.active_slots == 0  # created on first use, released after
    # (the sync client's read_artifacts sends nulls the server rejects: ask the REST API directly)
    import httpx

    body = {
        "artifacts": {"key": {"any_": ["training-retry-demo"]}},
        "sort": "CREATED_DESC",
        "limit": 5,
        "offset": 0,
    }
    progress = httpx.post(f"{env['api']}/artifacts/filter", json=body, timeout=30).json()
    assert progress and progress[0]["type"] == "progress" and float(progress[0]["data"]) == 100.0

    # the loopline.model.trained event reached the API (events are stored asynchronously: poll)
    import time

    deadline, events = time.time() + 30, []
    while not events and time.time() < deadline:
        query = {
            "filter": {
                "event": {"name": ["loopline.model.trained"]},
                "any_resource": {"id": ["loopline.model.retry_demo"]},
            },
            "limit": 5,
        }
        events = httpx.post(f"{env['api']}/events/filter", json=query, timeout=30).json().get("events", [])
        time.sleep(0.5)
    assert events and events[0]["payload"]["model_version"] == "1"
    assert events[0]["payload"]["state_sha256"] == result["state_sha256"]

    # the flow is the same task: a rerun of the same configuration returns the registered model
    again = train_flow(cfg, "demo")
    assert again["reused_run"] and again["model_version"] == "1"


def test_retry_policy():
    from prefect.states import Failed

    from loopline.errors import ConfigError
    from loopline.train import Preempted
    from tasks.training import retry_training

    def failed(exc: BaseException):
        return Failed(data=exc)

    assert retry_training(None, None, failed(RuntimeError("CUDA error: an illegal memory access")))
    assert not retry_training(None, None, failed(ConfigError("training.lr must be >= 0")))
    assert retry_training(
        None, None, failed(Preempted("spot", step=5, checkpoint_uri=None, reason="spot notice"))
    )
