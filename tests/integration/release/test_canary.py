"""Canary rollouts on real components: a real model server process following the MLflow registry (SQLite),
the `canary-analysis` flow on the session's Prefect API, continuous load from client threads.

One registered model holds four versions of the same weights: v1 the champion, v2 the same model made worse
by the test (every call 150 ms slower, every third call fails), v3 the same model as it is, v4 the same model
with its answers inverted (as fast and reliable, worse only on labels). Each test rolls a
version out against whatever is champion at its start, so the tests hold in either order.
"""

from __future__ import annotations

import itertools
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
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


def inverted_mlp(input_dim: int, output_dim: int, cfg):
    """The built-in MLP with its logit negated: as fast and as reliable, P(positive) turned into 1 - P."""
    import torch

    from loopline.train.models import mlp

    class Inverted(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = mlp(input_dim, output_dim, cfg)

        def forward(self, x):
            return -self.inner(x)

    return Inverted()


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
            make_bundle(home / "b" / "v4", seed=0, factory=f"{__name__}:inverted_mlp"),
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
    """Client threads sending one-row requests with random X-Request-Keys until stopped; every answer kept,
    as (time sent, status, model version).

    Closed-loop clients pile up on a slow challenger (each waits for its answer before sending again), so
    whether the champion keeps serving is watched by one more client whose keys always route to the
    champion below a 50% split: its answers go to `watch`. That client runs in a process of its own: in
    this one it shares the GIL with the canary flow run, and once waited more than a second to send (CI)."""

    def __init__(self, url: str, threads: int = 4):
        from loopline.serving.router import key_share

        rows = demo_rows(300, seed=5).to_dict("records")
        self.bodies = [orjson.dumps({"dataframe_records": [r]}) for r in rows]
        self.url, self.answers, self.watch, self.stop_at = url, [], [], threading.Event()
        pick = random.Random(99)
        keys = (str(pick.random()) for _ in itertools.count())
        self.champion_keys = list(itertools.islice((k for k in keys if key_share(k.encode()) >= 0.5), 50))
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]
        self._watcher: subprocess.Popen | None = None
        self._watch_file = Path(tempfile.mkdtemp(prefix="canary-watch-")) / "watch.jsonl"

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(timeout=30) as client:
            while not self.stop_at.is_set():
                key = str(rng.random())
                # the time the request is *sent*: one sent to the slow challenger before an abort may be
                # answered after it, and is no evidence that anything reached the challenger afterwards
                sent = time.monotonic()
                r = client.post(
                    f"{self.url}/invocations",
                    content=rng.choice(self.bodies),
                    headers={"content-type": "application/json", "x-request-key": key},
                )
                self.answers.append((sent, r.status_code, r.headers.get("x-model-version")))

    def __enter__(self) -> Load:
        keys = self._watch_file.with_name("keys.json")
        keys.write_text(json.dumps({"keys": self.champion_keys, "bodies": [b.decode() for b in self.bodies]}))
        self._watcher = subprocess.Popen(
            [sys.executable, "-c", WATCHER, f"{self.url}/invocations", str(keys), str(self._watch_file)]
        )
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_at.set()
        for t in self.threads:
            t.join(30)
        assert self._watcher is not None
        self._watcher.terminate()
        self._watcher.wait(30)
        lines = self._watch_file.read_text().splitlines() if self._watch_file.exists() else []
        self.watch = [tuple(json.loads(line)) for line in lines if line.endswith("]")]


# the watcher: champion-routed one-row requests in a loop, each answer appended as [time sent, status, version]
WATCHER = r"""
import json, random, sys, time
import httpx
url, keys, out = sys.argv[1:4]
spec = json.load(open(keys))
rng = random.Random(7)
with httpx.Client(timeout=30) as client, open(out, "a", buffering=1) as sink:
    while True:
        sent = time.monotonic()
        r = client.post(url, content=rng.choice(spec["bodies"]), headers={"content-type": "application/json", "x-request-key": rng.choice(spec["keys"])})
        sink.write(json.dumps([sent, r.status_code, r.headers.get("x-model-version")]) + "\n")
"""


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
    # the champion answered the watcher in every second of the load; after the abort nothing reached v2.
    # (A second, not less: the watcher's own process shares 2 cores with the server, the flow run and the
    # other clients.)
    assert {(s, v) for _, s, v in load.watch} == {(200, champion)}
    first, last = load.watch[0][0], load.watch[-1][0]
    slots = {int(t - first) for t, _, _ in load.watch}
    assert slots == set(range(int(last - first) + 1))
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


def test_a_challenger_worse_on_labels_is_aborted(fleet, prefect_api):
    """Labels come back through POST /feedback while the canary runs: they agree with the champion, and the
    challenger (v4: its probabilities inverted, as fast and as reliable) is significantly worse on them. The
    live-metric check (the gate's bootstrap CI on the labelled rows) aborts it; no other check fails."""
    from mlflow import MlflowClient

    from flows.canary import canary_analysis_flow
    from loopline.data.contract_registry import register_contract
    from loopline.data.contracts import load_contract
    from loopline.storage.lake import Lake
    from tests.serving_support import DEMO_CONTRACT

    # the analysis reads labels with the model's contract: the lake's, of the dataset v4 was trained on
    register_contract(Lake(root=str(fleet["home"] / "lake")), load_contract(DEMO_CONTRACT))
    client = MlflowClient(fleet["tracking_uri"])
    client.set_tag(client.get_model_version("canary", "4").run_id, "loopline.dataset", "demo")

    url, champion = fleet["server"].url, aliases(fleet)["champion"]
    rows = demo_rows(200, seed=9).to_dict("records")
    bodies = [orjson.dumps({"dataframe_records": rows[i : i + 4]}) for i in range(0, len(rows), 4)]
    with httpx.Client(base_url=url, timeout=30) as http:  # before the rollout: the champion answers all
        scores = [
            http.post("/invocations", content=b, headers={"content-type": "application/json"}).json()
            for b in bodies
        ]
    p = np.array([v for s in scores for v in s["predictions"]])
    # labels that follow the champion's ranking, one in five flipped: it is good on them, v4 bad, neither perfect
    noise = np.random.default_rng(3).random(len(p)) < 0.2
    truth = ((p > np.median(p)) ^ noise).astype(int).reshape(len(bodies), 4)

    answered, feedback, stop = [], [], threading.Event()

    def load(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=url, timeout=30) as http:
            while not stop.is_set():
                i = rng.randrange(len(bodies))
                r = http.post(
                    "/invocations",
                    content=bodies[i],
                    headers={"content-type": "application/json", "x-request-key": str(rng.random())},
                )
                answered.append(
                    (r.headers.get("x-request-id"), i, r.status_code, r.headers.get("x-model-version"))
                )

    def label() -> None:  # every 0.2 s, the labels of what was answered since
        done = 0
        with httpx.Client(base_url=url, timeout=30) as http:
            while not stop.wait(0.2):
                new, done = answered[done:], len(answered)
                items = [
                    {"request_id": rid, "row": k, "label": int(truth[i][k])}
                    for rid, i, status, _ in new
                    if status == 200
                    for k in range(4)
                ]
                if items:
                    feedback.append(http.post("/feedback", json={"items": items}).status_code)

    threads = [threading.Thread(target=load, args=(n,), daemon=True) for n in range(3)]
    threads.append(threading.Thread(target=label, daemon=True))
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        cfg = config(fleet, steps=[50, 100], min_step_seconds=3.0, min_step_requests=20)
        cfg.rollout.prediction_shift_threshold = None  # 1 - P is a shifted distribution: judge on labels only
        result = canary_analysis_flow("canary", 4, config=cfg)
        done = time.monotonic()
        time.sleep(0.5)
        after = len(answered)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(30)

    assert result["action"] == "abort", result["reason"]
    assert [m["action"] for m in result["steps"]] == ["abort"]  # judged at the first step, never ramped
    failed = [c for c in result["evidence"]["checks"] if c["passed"] is False]
    assert [c["name"] for c in failed] == ["live roc_auc"], result["evidence"]["checks"]
    assert "CI of the improvement" in failed[0]["detail"] and "unpaired bootstrap" in failed[0]["detail"]
    assert result["event_emitted"] and result["fleet"]["converged"]
    assert aliases(fleet)["champion"] == champion and aliases(fleet)["challenger"] is None
    assert {s for _, _, s, _ in answered} == {200} and set(feedback) == {200}
    assert {v for _, _, _, v in answered[after:]} == {str(champion)}, done
