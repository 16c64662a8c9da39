"""`python -m loopline.serving` as a real process on a model trained and registered by the real pipeline:
protocol parity with `mlflow models serve --env-manager local` and with the pyfunc, a champion swap under
continuous load (reload endpoint, then registry poll) without a failed request, the challenger split over
2,000 requests, the inference log after a graceful stop, and no Prefect/GX in the serving process."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import orjson
import pytest

from tests.serving_support import (
    ServerProcess,
    build_registered_model,
    demo_rows,
    mlflow_serve,
    payloads,
    pyfunc_frame,
    stop_process,
    wait_http,
)

pytestmark = pytest.mark.integration
TOKEN = "test-reload-token"


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """Two versions of `demo` trained by the real pipeline; version 1 is @champion."""
    home = tmp_path_factory.mktemp("serving-home")
    return build_registered_model(home, versions=2)


@pytest.fixture(scope="module")
def mlflow_server(registry):
    """The peer: one `mlflow models serve` for the module (it is slow to start)."""
    proc, url = mlflow_serve(f"models:/{registry['model']}/1", registry["tracking_uri"], registry["home"])
    yield proc, url
    stop_process(proc)


@pytest.fixture(scope="module")
def server(registry, mlflow_server):
    srv = ServerProcess(
        registry["model"],
        registry["home"],
        registry["tracking_uri"],
        "--poll-seconds",
        "0.5",
        env={"LOOPLINE_RELOAD_TOKEN": TOKEN, "PYTHONPROFILEIMPORTTIME": "1"},
    )
    srv.wait_ready()
    yield srv
    srv.stop()


def _post(url: str, body: dict, client: httpx.Client | None = None, **headers) -> httpx.Response:
    send = client.post if client is not None else httpx.post
    return send(
        f"{url}/invocations",
        content=orjson.dumps(body),
        headers={"content-type": "application/json", **headers},
        timeout=30,
    )


def test_same_predictions_as_mlflow_serve_and_the_pyfunc_in_all_four_formats(registry, server, mlflow_server):
    proc, mlflow_url = mlflow_server
    wait_http(f"{mlflow_url}/ping", timeout=180, proc=proc)
    import mlflow.pyfunc

    pyfunc = mlflow.pyfunc.load_model(f"models:/{registry['model']}/1")
    frame = demo_rows(80, seed=21)
    complete = frame.dropna().head(20)
    with_nulls = frame.copy()
    with_nulls.loc[with_nulls.index[::4], ["f01", "channel", "note"]] = (
        None  # nulls where the contract allows them
    )
    for rows, formats in (
        (complete, ["dataframe_split", "dataframe_records", "instances", "inputs"]),
        # MLflow turns row/column lists holding nulls into object arrays for `instances` and `inputs` and
        # scores them differently from the same rows as a DataFrame (its own split/records answer):
        # with nulls, parity with mlflow holds for the DataFrame formats; ours equals the pyfunc for all four
        (with_nulls, ["dataframe_split", "dataframe_records"]),
    ):
        expected = [float(v) for v in pyfunc.predict(pyfunc_frame(rows))]
        for name, body in payloads(rows).items():
            ours = _post(server.url, body)
            assert ours.status_code == 200, (name, ours.text)
            assert ours.headers["x-model-version"] == "1"
            assert ours.json()["predictions"] == expected, name
            if name in formats:
                theirs = _post(mlflow_url, body)
                assert theirs.status_code == 200, (name, theirs.text[:500])
                assert ours.json() == theirs.json(), name


def test_the_serving_process_imports_no_prefect_great_expectations_or_mlflow(server):
    assert _post(server.url, payloads(demo_rows(2))["instances"]).status_code == 200
    imported = {
        line.split("|")[-1].strip().split(".")[0]
        for line in server.log_path.read_text().splitlines()
        if line.startswith("import time:")
    }
    assert "torch" in imported and "uvicorn" in imported  # the import log is real
    assert "prefect" not in imported and "great_expectations" not in imported
    assert "mlflow" not in imported  # the SQLite registry was read without MLflow (light_registry)


def test_champion_swap_under_continuous_load_drops_no_request(registry, server):
    from mlflow import MlflowClient

    client = MlflowClient(registry["tracking_uri"])
    model, (v1, v2) = registry["model"], registry["versions"]
    body = payloads(demo_rows(3, seed=2))["dataframe_records"]
    stop = threading.Event()
    results: list[tuple[int, str, float]] = []

    def load():
        with httpx.Client() as http:
            while not stop.is_set():
                try:
                    r = _post(server.url, body, http)
                    results.append((r.status_code, r.headers.get("x-model-version", ""), time.monotonic()))
                except httpx.HTTPError as exc:
                    results.append((0, repr(exc), time.monotonic()))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        # 1) the reload endpoint: the answer comes after the swap
        assert httpx.post(f"{server.url}/reload", headers={"x-reload-token": "wrong"}).status_code == 401
        client.set_registered_model_alias(model, "champion", v2)
        reloaded = httpx.post(f"{server.url}/reload", headers={"x-reload-token": TOKEN}, timeout=60)
        swapped_at = time.monotonic()
        # (the 0.5 s poll may have swapped first; either way the answer comes after the swap)
        assert reloaded.status_code == 200 and reloaded.json()["version"] == v2
        time.sleep(1.0)
        # 2) the registry poll: move the alias back and wait for the server to follow
        client.set_registered_model_alias(model, "champion", v1)
        deadline = time.monotonic() + 30
        while httpx.get(f"{server.url}/version").json()["version"] != v1:
            assert time.monotonic() < deadline, "the poll did not pick up the moved alias"
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    failed = [r for r in results if r[0] != 200]
    assert not failed, failed[:5]
    versions = [v for _, v, _ in results]
    assert v1 in versions and v2 in versions and len(results) > 50
    # once /reload answered, no request was served by the old version until the alias moved back
    after = [v for _, v, at in results if swapped_at + 0.05 < at < swapped_at + 0.9]
    assert after and set(after) == {v2}


def test_challenger_split_over_2000_requests(registry, tmp_path):
    from mlflow import MlflowClient

    model, v2 = registry["model"], registry["versions"][1]
    MlflowClient(registry["tracking_uri"]).set_registered_model_alias(model, "challenger", v2)
    srv = ServerProcess(
        model, registry["home"], registry["tracking_uri"], "--challenger-weight", "0.3", "--no-inference-log"
    )
    try:
        srv.wait_ready()
        assert httpx.get(f"{srv.url}/version").json()["challenger"]["version"] == v2
        body = payloads(demo_rows(1, seed=3))["instances"]
        from concurrent.futures import ThreadPoolExecutor

        def send(n: int) -> list[str]:
            with httpx.Client() as http:
                return [_post(srv.url, body, http).headers["x-model-version"] for _ in range(n)]

        with ThreadPoolExecutor(8) as pool:
            versions = [v for part in pool.map(send, [250] * 8) for v in part]
        assert len(versions) == 2000
        assert abs(versions.count(v2) / 2000 - 0.3) < 0.045  # 4 binomial sd
        metrics = httpx.get(f"{srv.url}/metrics").text
        assert f'loopline_serving_version_requests_total{{role="challenger",version="{v2}"}}' in metrics
    finally:
        srv.stop()


def test_inference_log_holds_every_scored_row_after_a_graceful_stop(registry, tmp_path):
    lake_root = tmp_path / "lake"
    srv = ServerProcess(
        registry["model"],
        registry["home"],
        registry["tracking_uri"],
        "--log-flush-seconds",
        "30",
        env={"LOOPLINE_LAKE_URI": str(lake_root)},
    )
    sent: dict[str, int] = {}
    try:
        srv.wait_ready()
        with httpx.Client() as http:
            for i in range(40):
                frame = demo_rows(1 + i % 7, seed=100 + i)
                assert (
                    _post(
                        srv.url, payloads(frame)["dataframe_split"], http, **{"x-request-id": f"req-{i}"}
                    ).status_code
                    == 200
                )
                sent[f"req-{i}"] = len(frame)
    finally:
        code = srv.stop()
    # uvicorn re-raises the SIGTERM it caught once its graceful shutdown is done: -15 is a clean stop
    assert code in (0, -15), Path(srv.log_path).read_text()[-2000:]
    from deltalake import DeltaTable

    log = DeltaTable(str(lake_root / "predictions" / registry["model"])).to_pandas()
    assert (
        log.groupby("_request_id").size().to_dict() == sent
    )  # flushed at stop, long before the 30 s cadence
    assert set(log["_model_version"]) == {registry["versions"][0]} and set(log["_role"]) == {"champion"}
