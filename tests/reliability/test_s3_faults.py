"""The lifecycle on an S3 lake behind a fault-injecting proxy (tests/reliability/s3_proxy.py): 20% of all
S3 requests get a 503 SlowDown, a connection reset mid-response or a multi-second stall.

Through the proxy, with the retries loopline configures (loopline/storage/s3_retries.py) and nothing else:
ingest of 20 files (4 in `make test`: the same rows) from s3:// into the lake, features, training with its
checkpoints and its MLflow artifacts on S3, promotion (infra validation in a fresh process, evaluation), and
a model server (the real ASGI app in-process, its champion downloaded from MLflow's S3 artifacts) whose
inference log writes predictions/M to the lake. Then, read straight from moto (no proxy), every table holds
every input row exactly once: the ids and counts a fault-free run gives (derived from the inputs: the
dataset is clean, every row lands in raw, clean, features and, once per request, predictions).

Then the pieces: each client outlasts three 503s in a row (boto3's default gives up there); a body that
breaks mid-way is read again; and the fault delta-rs cannot retry (s3_proxy's docstring), a commit that
landed but answered with a reset: the stage fails, and running it again, as its Prefect task's retries do,
leaves every row exactly once.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

import boto3
import httpx
import numpy as np
import pytest
from deltalake import DeltaTable

from tests.datasets import frame
from tests.reliability.conftest import rounds
from tests.reliability.s3_proxy import KINDS, FaultProxy

pytestmark = pytest.mark.integration

DATASET = "cancer"  # 569 rows, 30 float features, binary
FILES = rounds(4, 20)  # the same 569 rows in 4 or 20 objects: each file is a batch, and a batch's commits
# re-read every table's log (O(files^2) requests: 20 files ~11,000 requests, ~260 s at 20% faults here)
RATE = 0.2
TINY = {
    "training": {"max_steps": 30, "hidden_sizes": [16], "eval_every_steps": 10, "checkpoint_every_steps": 10},
    "evaluation": {"bootstrap_samples": 50, "max_slice_regression": None},
}


@pytest.fixture(scope="module")
def s3_proxy(moto_s3):
    """The fault proxy in front of the session's moto_server; faults off until a test turns them on."""
    proxy = FaultProxy(
        moto_s3["endpoint_url"], rate=0.0, seed=20, stall_seconds=rounds(2.0, 5.0), max_stalls=rounds(3, 15)
    ).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def s3_world(s3_proxy, moto_s3, home, tmp_path, monkeypatch):
    """A fresh bucket with the dataset as FILES CSV objects (written straight to moto), the environment
    pointing the lake and MLflow's artifacts at the proxy, and a lake that reads straight from moto."""
    from loopline.data.draft import draft_contract
    from loopline.storage.lake import Lake

    bucket = "faults-" + secrets.token_hex(4)
    creds = {
        "aws_access_key_id": moto_s3["access_key_id"],
        "aws_secret_access_key": moto_s3["secret_access_key"],
    }
    direct = boto3.client("s3", endpoint_url=moto_s3["endpoint_url"], region_name="us-east-1", **creds)
    direct.create_bucket(Bucket=bucket)
    data = frame(DATASET)
    sample = tmp_path / f"{DATASET}.csv"
    data.to_csv(sample, index=False)
    for i, part in enumerate(np.array_split(np.arange(len(data)), FILES)):
        body = data.iloc[part].to_csv(index=False).encode()
        direct.put_object(Bucket=bucket, Key=f"landing/part-{i:02d}.csv", Body=body)
    contract = draft_contract(sample, name=DATASET, label="target").contract
    env = {
        "LOOPLINE_LAKE_URI": f"s3://{bucket}/lake",
        "AWS_ENDPOINT_URL": s3_proxy.url,
        "MLFLOW_S3_ENDPOINT_URL": s3_proxy.url,
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": moto_s3["access_key_id"],
        "AWS_SECRET_ACCESS_KEY": moto_s3["secret_access_key"],
        "LOOPLINE_CODE_VERSION": "s3-faults",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE", "LOOPLINE_S3_MAX_ATTEMPTS", "LOOPLINE_S3_RETRY_MODE"):
        monkeypatch.setenv(key, "")  # recorded, so the value loopline sets for MLflow is undone afterwards
        monkeypatch.delenv(key)
    checker = Lake(
        root=f"s3://{bucket}/lake",
        endpoint_url=moto_s3["endpoint_url"],
        region="us-east-1",
        access_key_id=moto_s3["access_key_id"],
        secret_access_key=moto_s3["secret_access_key"],
    )
    yield {"bucket": bucket, "data": data, "contract": contract, "checker": checker, "direct": direct}
    s3_proxy.configure(rate=0.0, kinds=list(KINDS), only_commits=False, commit_resets="as_503", script=[])


def test_the_lifecycle_on_s3_at_20_percent_faults_loses_and_doubles_nothing(
    s3_world, s3_proxy, home, reliability_report, monkeypatch
):
    import torch
    from mlflow import MlflowClient

    from loopline.config import LifecycleConfig
    from loopline.data.ingest import ingest_source
    from loopline.features import build_features
    from loopline.packaging.registry import experiment_name
    from loopline.release.promotion import promote
    from loopline.storage.lake import Lake
    from loopline.train import run_training

    contract, data, bucket = s3_world["contract"], s3_world["data"], s3_world["bucket"]
    ids = sorted(data["id"].tolist())
    tracking = f"sqlite:///{home / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=tracking, registry_uri=tracking)  # not another test's global registry
    client.create_experiment(experiment_name(DATASET), artifact_location=f"s3://{bucket}/mlflow")
    cfg = LifecycleConfig(home=str(home), **TINY)
    lake = Lake.from_env(str(home))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    s3_proxy.reset_counts()
    s3_proxy.rate = RATE
    timings: dict[str, float] = {}
    try:
        started = time.perf_counter()
        results = ingest_source(f"s3://{bucket}/landing/", contract, lake, cfg)
        timings["ingest"] = time.perf_counter() - started
        assert [r.accepted for r in results] == [True] * FILES, [r.reason for r in results if not r.accepted]
        build_features(lake, contract, cfg.features)
        timings["features"] = time.perf_counter() - started - sum(timings.values())
        trained = run_training(cfg, DATASET, lake=lake, tracking_uri=tracking)
        timings["training"] = time.perf_counter() - started - sum(timings.values())
        promoted = promote(cfg, DATASET, lake=lake, tracking_uri=tracking)
        timings["promotion"] = time.perf_counter() - started - sum(timings.values())
        assert promoted["promoted"], promoted["reason"]
        # the inference log claims to survive a commit that landed with its answer lost: let it meet them
        s3_proxy.commit_resets = "lost"
        sent = serve_and_score(home, tracking, lake, data)
        timings["serving"] = time.perf_counter() - started - sum(timings.values())
    finally:
        s3_proxy.rate = 0.0
        s3_proxy.commit_resets = "as_503"
        torch.set_num_threads(threads)
    faults = dict(s3_proxy.faults)
    print(f"\nS3 faults injected: {faults} in {s3_proxy.requests} requests; stage seconds: {timings}")
    assert s3_proxy.errors == []  # every failure the clients saw was one the proxy injected
    for kind in ("slowdown", "reset", "stall"):
        assert faults.get(kind, 0) > 0, faults

    # every table, read straight from moto, against what a fault-free run writes
    checker = s3_world["checker"]
    lost, doubled = each_id_once(checker, contract.id, ids)
    assert table_ids(checker, "quarantine", DATASET, contract.id) == []
    predicted = table_ids(checker, "predictions", DATASET, contract.id)
    lost += len(set(sent) - set(predicted))
    doubled += len(predicted) - len(set(predicted))
    assert sorted(predicted) == sorted(sent) == ids
    ledger = DeltaTable(checker.uri("batches", DATASET), storage_options=checker.storage_options).to_pandas()
    assert len(ledger) == FILES and ledger["batch_id"].nunique() == FILES

    steps = sorted(
        int(Path(u).stem.split("-")[-1]) for u in checker.list(checker.uri("checkpoints", DATASET))
    )
    assert steps == [10, 20, 30]  # keep_last 3 of a checkpoint every 10 steps, as without faults
    assert trained["steps"] == 30 and trained["model_version"] == "1"
    assert [int(v.version) for v in client.search_model_versions(f"name='{DATASET}'")] == [1]
    assert int(client.get_model_version_by_alias(DATASET, "champion").version) == 1
    mlflow_objects = s3_world["direct"].list_objects_v2(Bucket=bucket, Prefix="mlflow/").get("KeyCount", 0)
    assert mlflow_objects > 0  # the model's artifacts went to S3, through the proxy

    injected = sum(faults.get(k, 0) for k in ("slowdown", "reset", "stall"))
    reliability_report.add(
        "S3 faults at 20% (503, resets, stalls)",
        tries=injected,
        lost=lost,
        doubled=doubled,
        faults=faults,
        requests=s3_proxy.requests,
        stage_seconds={k: round(v, 1) for k, v in timings.items()},
        note=f"{FILES} files, {s3_proxy.requests} requests: {faults.get('slowdown', 0)} x 503, "
        f"{faults.get('reset', 0)} resets ({faults.get('reset_mid_body', 0)} mid-body), "
        f"{faults.get('stall', 0)} stalls; {sum(timings.values()):.0f} s",
    )
    assert lost == 0 and doubled == 0


def test_each_s3_client_outlasts_three_503s_in_a_row(s3_world, s3_proxy, home, tmp_path, monkeypatch):
    """The retry budgets, deterministically: three SlowDowns in a row (boto3's default, standard mode, gives
    up after 3 tries) are outlasted by the lake's boto3 client, delta-rs and MLflow's S3 artifact client;
    and LOOPLINE_S3_MAX_ATTEMPTS reaches delta-rs."""
    import pyarrow as pa
    from deltalake import write_deltalake
    from mlflow.store.artifact.s3_artifact_repo import S3ArtifactRepository

    from loopline.packaging.registry import registry_client
    from loopline.storage.lake import Lake

    lake, bucket, checker = Lake.from_env(str(home)), s3_world["bucket"], s3_world["checker"]
    s3_proxy.script = ["slowdown"] * 3
    lake.put_bytes(lake.uri("objects", "a.bin"), b"through three 503s")
    assert s3_proxy.script == [] and checker.get_bytes(lake.uri("objects", "a.bin")) == b"through three 503s"

    s3_proxy.script = ["slowdown"] * 3
    write_deltalake(lake.uri("tables", "t"), pa.table({"x": [1]}), storage_options=lake.storage_options)
    assert s3_proxy.script == []

    registry_client(f"sqlite:///{home / 'mlflow.db'}")  # gives MLflow's boto3 client loopline's retries
    artifact = tmp_path / "artifact.txt"
    artifact.write_text("through three 503s")
    s3_proxy.script = ["slowdown"] * 3
    S3ArtifactRepository(f"s3://{bucket}/mlflow-check").log_artifact(str(artifact))
    assert s3_proxy.script == []
    body = s3_world["direct"].get_object(Bucket=bucket, Key="mlflow-check/artifact.txt")["Body"].read()
    assert body == b"through three 503s"

    monkeypatch.setenv("LOOPLINE_S3_MAX_ATTEMPTS", "2")  # 1 retry: the second 503 in a row is final
    s3_proxy.script = ["slowdown"] * 2
    with pytest.raises(OSError, match="503"):
        write_deltalake(
            lake.uri("tables", "t"), pa.table({"x": [2]}), mode="append", storage_options=lake.storage_options
        )
    s3_proxy.script = []


def test_an_object_whose_body_breaks_mid_way_is_read_again(s3_world, s3_proxy, home, tmp_path):
    """boto3 retries a request, not the caller's read of a streamed body: a reset mid-body reached the
    caller (a source file rejected as unreadable, a checkpoint unreadable) until the lake read it again."""
    from loopline.storage import sources
    from loopline.storage.lake import Lake

    lake, bucket = Lake.from_env(str(home)), s3_world["bucket"]
    uri = f"s3://{bucket}/landing/part-00.csv"
    expected = s3_world["direct"].get_object(Bucket=bucket, Key="landing/part-00.csv")["Body"].read()
    s3_proxy.reset_counts()
    s3_proxy.script = ["reset", "reset"]  # the first two GETs answer half their body, then RST
    src = sources.fetch(uri, lake, str(tmp_path))
    assert Path(src.local_path).read_bytes() == expected
    s3_proxy.script = ["reset"]
    assert lake.get_bytes(uri) == expected
    assert s3_proxy.script == [] and s3_proxy.faults["reset_mid_body"] == 3


def serve_and_score(home: Path, tracking: str, lake, data) -> list[int]:
    """The model server's ASGI app in-process: champion from the registry (artifacts on S3), every row
    scored in requests of 50, then a graceful stop, which writes the inference log out."""
    from loopline.config import ServingConfig
    from loopline.serving.registry_source import RegistrySource
    from loopline.serving.server import build_app

    cfg = ServingConfig(
        poll_seconds=0, device="cpu", torch_threads=1, log_flush_rows=50, log_flush_seconds=0.5
    )
    source = RegistrySource(tracking, home / "serving" / "bundles")
    app = build_app(DATASET, cfg, source=source, home=str(home), lake=lake)
    rows = data.drop(columns=["target"])
    sent: list[int] = []

    async def run() -> None:
        await app.startup()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://serve") as http:
            for start in range(0, len(rows), 50):
                part = rows.iloc[start : start + 50]
                doc = {"dataframe_split": {"columns": list(part.columns), "data": part.values.tolist()}}
                resp = await http.post("/invocations", json=doc)
                assert resp.status_code == 200, resp.text
                assert len(resp.json()["predictions"]) == len(part)
                sent.extend(int(i) for i in part["id"])
        await app.shutdown()

    asyncio.run(run())
    log = app.inference_log
    assert log.dropped_rows == 0 and log.deadletter_rows == 0, vars(log)
    return sent


def each_id_once(checker, id_column: str, expected: list) -> tuple[int, int]:
    """Assert raw, clean and features each hold exactly the `expected` ids once; returns (lost, doubled)."""
    lost = doubled = 0
    for kind in ("raw", "clean", "features"):
        got = table_ids(checker, kind, DATASET, id_column)
        lost += len(set(expected) - set(got))
        doubled += len(got) - len(set(got))
        assert sorted(got) == expected, (
            f"{kind}/{DATASET}: {len(got)} rows, {len(set(got))} distinct, {len(expected)} sent"
        )
    return lost, doubled


def table_ids(lake, kind: str, name: str, id_column: str) -> list[int]:
    """The id column of a Delta table, [] when the table does not exist."""
    from loopline.storage import delta

    table = delta.open_table(lake, lake.uri(kind, name))
    if table is None:
        return []
    return [int(i) for i in table.to_pyarrow_table(columns=[id_column]).column(id_column).to_pylist()]


def test_a_commit_whose_answer_is_lost_fails_the_stage_and_its_rerun_lands_every_row_once(
    s3_world, s3_proxy, home, reliability_report
):
    """delta-rs cannot retry a commit whose connection resets (s3_proxy's docstring): half of all commits
    land and answer with a reset. Each stage is run again until it succeeds, as its Prefect task's retries
    do; the Delta app transactions make every rerun skip what already landed."""
    from loopline.config import LifecycleConfig
    from loopline.data.ingest import ingest_file
    from loopline.features import build_features
    from loopline.storage.lake import Lake

    contract, data, bucket = s3_world["contract"], s3_world["data"], s3_world["bucket"]
    files = rounds(3, 8)
    lake, cfg = Lake.from_env(str(home)), LifecycleConfig(home=str(home))
    s3_proxy.reset_counts()
    s3_proxy.configure(rate=0.5, kinds=["reset"], only_commits=True, commit_resets="lost")
    failures: list[str] = []
    try:
        for i in range(files):
            uri = f"s3://{bucket}/landing/part-{i:02d}.csv"
            assert until_done(lambda uri=uri: ingest_file(uri, contract, lake, cfg), failures).accepted
        until_done(lambda: build_features(lake, contract, cfg.features), failures)
    finally:
        s3_proxy.configure(rate=0.0, kinds=list(KINDS), only_commits=False, commit_resets="as_503")
    faults = dict(s3_proxy.faults)
    print(f"\ncommits that landed unanswered: {faults}; stage failures: {len(failures)}: {failures[:3]}")
    assert faults.get("commit_lost", 0) > 0 and failures

    checker = s3_world["checker"]
    sent = sorted(ids_of_files(data, files))
    lost, doubled = each_id_once(checker, contract.id, sent)
    reliability_report.add(
        "S3 commits answered by a reset (landed), stage rerun",
        tries=faults.get("commit_lost", 0),
        lost=lost,
        doubled=doubled,
        stage_failures=len(failures),
        note=f"{len(failures)} stage failures, each rerun skipped what had landed",
    )


def until_done(stage, failures: list[str], attempts: int = 12):
    """Run a stage until it does not raise (a Prefect task with retries, without the delays)."""
    for _ in range(attempts - 1):
        try:
            return stage()
        except Exception as exc:  # noqa: BLE001 - what a task retry catches
            failures.append(f"{type(exc).__name__}: {str(exc)[:200]}")
    return stage()


def ids_of_files(data, files: int) -> list[int]:
    """The ids in the first `files` of the FILES parts the fixture uploaded."""
    parts = np.array_split(np.arange(len(data)), FILES)[:files]
    return [int(data["id"].iloc[i]) for part in parts for i in part]
