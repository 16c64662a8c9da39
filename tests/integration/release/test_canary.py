"""Canary rollouts on real components: a real model server process following the MLflow registry (SQLite),
the `canary-analysis` flow on the session's Prefect API, continuous load from client threads.

One registered model holds three versions of the same weights: v1 the champion, v2 the same model made worse
by the test (every call 150 ms slower, every third call fails), v3 the same model as it is. Each test rolls a
version out against whatever is champion at its start, so the tests hold in either order.
"""

from __future__ import annotations

import itertools
import random
import threading
import time

import httpx
import orjson
import pytest

from loopline.config import LifecycleConfig
from tests.serving_support import ServerProcess, demo_rows, make_bundle, register_bundles

pytestmark = pytest.mark.integration
WORSE_SECONDS = 0.15  # each call of the worse model
WORSE_EVERY = 3  # every third call of the worse model fails (the first two, warm-up included, do not)


def worse_mlp(input_dim: int, output_dim: int, cfg):
    """The built-in MLP, slower and failing: a bundle factory ("module:function") the server loads."""
    import torch

    from loopline.train.models import mlp

    calls = itertools.count()

    class Worse(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = mlp(input_dim, output_dim, cfg)

        def forward(self, x):
            time.sleep(WORSE_SECONDS)
            if next(calls) % WORSE_EVERY == WORSE_EVERY - 1:
                raise RuntimeError("injected failure")
            return self.inner(x)

    return Worse()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    home = tmp_path_factory.mktemp("canary-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOOPLINE_HOME", str(home))
        mp.delenv("LOOPLINE_LAKE_URI", raising=False)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
        bundles = [
            make_bundle(home / "b" / "v1", seed=0),
            make_bundle(home / "b" / "v2", seed=0, factory=f"{__name__}:worse_mlp"),
            make_bundle(home / "b" / "v3", seed=0),
        ]
        reg = register_bundles(home, bundles, model="canary")
        server = ServerProcess(
            "canary",
            str(home),
            reg["tracking_uri"],
            "--poll-seconds",
            "0.2",
            "--log-flush-seconds",
            "0.2",
            "--device",
            "cpu",
        ).wait_ready()
        try:
            yield {**reg, "server": server, "home": home}
        finally:
            server.stop()


def config(fleet, **rollout) -> LifecycleConfig:
    return LifecycleConfig(
        home=str(fleet["home"]),
        rollout={
            "mode": "canary",
            "steps": [20, 50, 100],
            "min_step_seconds": 0.5,
            "min_step_requests": 40,
            "analysis_interval_seconds": 0.25,
            "latency_slack_ms": 60.0,  # p99 of a few hundred requests on a shared 2-core machine is noisy
            "prediction_shift_threshold": 0.5,
            "serving_urls": [fleet["server"].url],
            "withdraw_timeout_seconds": 10,
            "step_timeout_seconds": 20,  # a fleet that never routes to the challenger fails in 20 s, not hangs
            **rollout,
        },
    )


class Load:
    """Client threads sending one-row requests with random X-Request-Keys until stopped; every answer kept."""

    def __init__(self, url: str, threads: int = 4):
        rows = demo_rows(300, seed=5).to_dict("records")
        self.bodies = [orjson.dumps({"dataframe_records": [r]}) for r in rows]
        self.url, self.answers, self.stop_at = url, [], threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(timeout=30) as client:
            while not self.stop_at.is_set():
                r = client.post(
                    f"{self.url}/invocations",
                    content=rng.choice(self.bodies),
                    headers={"content-type": "application/json", "x-request-key": str(rng.random())},
                )
                self.answers.append((time.monotonic(), r.status_code, r.headers.get("x-model-version")))

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_at.set()
        for t in self.threads:
            t.join(30)


def aliases(fleet) -> dict[str, int | None]:
    from loopline.packaging.registry import alias_version, registry_client

    client = registry_client(fleet["tracking_uri"])
    return {a: alias_version(client, "canary", a) for a in ("champion", "previous", "challenger")}


def test_a_worse_challenger_is_aborted_and_the_champion_keeps_its_traffic(fleet, prefect_api):
    from flows.canary import canary_analysis_flow
    from loopline.release.canary_analysis import Counts, scrape

    champion = str(aliases(fleet)["champion"])
    with Load(fleet["server"].url) as load:
        time.sleep(0.5)
        result = canary_analysis_flow("canary", 2, config=config(fleet))
        done = time.monotonic()
        time.sleep(1.0)  # load goes on after the verdict

    assert result["action"] == "abort", result["reason"]
    assert result["event_emitted"] and result["fleet"]["converged"]
    failed = {c["name"] for c in result["evidence"]["checks"] if c["passed"] is False}
    assert {"error rate", "p50 latency"} <= failed, result["evidence"]["checks"]
    assert [m["action"] for m in result["steps"]] == ["abort"]  # judged at the first step, never ramped
    assert aliases(fleet)["champion"] == int(champion) and aliases(fleet)["challenger"] is None
    # the champion never failed a request; every failure was the challenger's
    counts = scrape([fleet["server"].url])
    assert counts.get((champion, "champion"), Counts()).errors == 0
    failures = sum(1 for _, status, _ in load.answers if status != 200)
    assert failures == counts[("2", "challenger")].errors > 0
    # the champion answered in every half second of the load; after the abort nothing reached v2
    first, last = load.answers[0][0], load.answers[-1][0]
    slots = {int((t - first) / 0.5) for t, s, v in load.answers if v == champion and s == 200}
    assert slots == set(range(int((last - first) / 0.5) + 1))
    after = [(s, v) for t, s, v in load.answers if t > done]
    assert after and all(s == 200 and v == champion for s, v in after)


def test_a_better_challenger_ramps_through_every_step_and_becomes_champion(fleet, prefect_api):
    from flows.canary import canary_analysis_flow

    champion = aliases(fleet)["champion"]
    with Load(fleet["server"].url) as load:
        time.sleep(0.5)
        result = canary_analysis_flow("canary", 3, config=config(fleet))
        done = time.monotonic()
        time.sleep(1.0)

    assert result["action"] == "complete", result["reason"]
    assert [(m["action"], m["weight"]) for m in result["steps"]] == [
        ("ramp", 0.2),
        ("ramp", 0.5),
        ("complete", 1.0),
    ]
    assert all(m["challenger"]["requests"] >= 40 for m in result["steps"])
    assert result["event_emitted"] and result["fleet"]["converged"]
    assert aliases(fleet) == {"champion": 3, "previous": champion, "challenger": None}
    statuses = [s for _, s, _ in load.answers]
    assert len(statuses) > 500 and set(statuses) == {200}  # zero failed requests under continuous load
    assert {v for t, _, v in load.answers if t > done} == {"3"}
