"""Every wait on the Prefect API is bounded, on a real Prefect server: the `gpu` slot and the
`promote-<M>` slot held by another holder, and the `train` deployment's run that no worker picks up, each
end within their configured seconds with an error that says what was waited for, how long, which setting
bounds it and what to do."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from loopline.config import LifecycleConfig
from loopline.errors import WaitTimeoutError

pytestmark = pytest.mark.integration
TINY_TIMEOUT_S = 1.0
SLACK_S = 6.0  # the acquisition loop sleeps between tries; the error must come soon after the limit


@pytest.fixture
def client(prefect_api):
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # prefect fixes its settings at import, which may predate the fixture's PREFECT_API_URL
    with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
        with get_client(sync_client=True) as c:
            yield c


@contextmanager
def slot_held_elsewhere(client, limit: str) -> Iterator[None]:
    """A one-slot global concurrency limit whose slot another holder (a thread with its own lease) takes."""
    from prefect.concurrency.sync import concurrency

    from tasks.common import ensure_global_limit

    ensure_global_limit(client, limit, 1)
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with concurrency(limit, occupy=1, strict=True):
            held.set()
            release.wait(60)

    thread = threading.Thread(target=holder, daemon=True)
    thread.start()
    try:
        assert held.wait(30), "the other holder did not get the slot"
        yield
    finally:
        release.set()
        thread.join(20)


def _gpu(limit: str, timeout_s: float):
    from tasks.training import gpu_slot

    return gpu_slot(limit, 1, timeout_s)


def _promote(limit: str, timeout_s: float):
    from tasks.promotion import promotion_slot

    return promotion_slot(limit.removeprefix("promote-"), timeout_s)


@pytest.mark.parametrize(
    ("prefix", "take", "setting"),
    [
        ("gpu-t", _gpu, "training.gpu_slot_timeout_seconds"),
        ("promote-m", _promote, "evaluation.promotion_slot_timeout_seconds"),
    ],
    ids=["gpu", "promote"],
)
def test_a_slot_held_by_another_holder_times_out_with_a_clear_error(client, prefix, take, setting):
    limit = f"{prefix}-{uuid.uuid4().hex[:8]}"
    try:
        with slot_held_elsewhere(client, limit):
            started = time.monotonic()
            with pytest.raises(WaitTimeoutError) as caught:
                with take(limit, TINY_TIMEOUT_S):
                    pytest.fail("got a slot that another holder has")
            waited = time.monotonic() - started
            assert TINY_TIMEOUT_S <= waited < TINY_TIMEOUT_S + SLACK_S
            message = str(caught.value)
            assert f"waited {TINY_TIMEOUT_S:g} s ({setting})" in message
            assert f"limit {limit!r} (1 of its 1 slot(s) in use)" in message
            assert f"prefect gcl inspect {limit}" in message and f"raise {setting}" in message
        with take(limit, 30):  # freed: taken at once
            pass
    finally:
        client.delete_global_concurrency_limit_by_name(limit)


def test_a_train_run_no_worker_picks_up_times_out_and_is_cancelled(client, home):
    """retrain's wait for the `train` deployment (work pool gpu) ends after retrain.train_timeout_seconds,
    and the run it gave up on is cancelled instead of training later for no one."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    from tasks.retrain import TRAIN_DEPLOYMENT, train_on_pool

    cfg = LifecycleConfig(home=str(home))
    cfg.retrain.train_timeout_seconds = 2
    flow_name, name = TRAIN_DEPLOYMENT.split("/")
    deployment_id = client.create_deployment(
        flow_id=client.create_flow_from_name(flow_name), name=name, entrypoint="flows/training.py:train_flow"
    )
    try:
        started = time.monotonic()
        with pytest.raises(WaitTimeoutError) as caught:
            train_on_pool.fn(cfg, "demo", None)
        assert time.monotonic() - started < 2 + SLACK_S
        message = str(caught.value)
        assert "did not finish within 2 s (retrain.train_timeout_seconds)" in message
        assert "cancelled while Scheduled" in message and "prefect worker start --pool gpu" in message
        (run,) = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            sort=FlowRunSort.ID_DESC,  # every paging field explicit: this server refuses the client's nulls
            limit=5,
            offset=0,
        )
        assert run.state.type.value == "CANCELLED"
    finally:
        client.delete_deployment(deployment_id)
