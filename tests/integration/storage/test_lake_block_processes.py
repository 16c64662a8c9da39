"""One lake for every process: with a LakeStorage block saved (S3 on a real endpoint, the secret key a SecretStr)
and only `LOOPLINE_LAKE_BLOCK` set (no AWS_* in the parent), `loopline status` reads the block's lake, the
model server writes predictions/M where drift reads them, the DDP workers checkpoint into it, and
`python -m loopline.train`, which cannot load a block, refuses instead of reading another lake. The secret
key never shows in a child's argv, output or logs."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from loopline.storage.lake import Lake
from tests.cli_support import run_cli
from tests.serving_support import DEMO_CONTRACT, demo_rows, free_port, make_bundle, pyfunc_frame

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[3]
# what `Lake.from_env` reads, and the mark of a resolved lake: none may come from the parent here
LAKE_VARS = (
    "LOOPLINE_LAKE_URI",
    "LOOPLINE_LAKE_RESOLVED",
    "LOOPLINE_S3_ENDPOINT_URL",
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
)


@pytest.fixture(scope="module")
def block(prefect_api, moto_s3) -> dict:
    """A LakeStorage block saved in the real Prefect API, its lake a fresh bucket on moto."""
    from blocks.lake import LakeStorage

    secret = "block-secret-" + secrets.token_hex(12)  # moto takes any key; this one is easy to grep for
    bucket = "lake-" + secrets.token_hex(4)
    lake = Lake(
        root=f"s3://{bucket}/lake",
        endpoint_url=moto_s3["endpoint_url"],
        region=moto_s3["region"],
        access_key_id="block-key",
        secret_access_key=secret,
    )
    lake.s3_client().create_bucket(Bucket=bucket)
    name = "lake-" + secrets.token_hex(4)
    LakeStorage(
        root=lake.root,
        endpoint_url=lake.endpoint_url,
        region=lake.region,
        access_key_id=lake.access_key_id,
        secret_access_key=secret,
    ).save(name)
    return {"name": name, "lake": lake, "secret": secret}


@pytest.fixture
def only_block(block, home, monkeypatch) -> dict:
    """This process (and so every child) names the block and nothing else about the lake."""
    for var in LAKE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LOOPLINE_LAKE_BLOCK", block["name"])
    return block


class ChildWatch(threading.Thread):
    """Every 20 ms: the argv of each process descending from this one (/proc), and the text of the files
    matching `globs` (temp files a child deletes before it exits are read while they exist)."""

    def __init__(self, *globs: str):
        super().__init__(daemon=True)
        self.globs = globs
        self.argv: dict[int, str] = {}
        self.texts: dict[str, str] = {}
        self._halt = threading.Event()

    def __enter__(self) -> ChildWatch:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self._halt.set()
        self.join()
        self.sample()

    def run(self) -> None:
        while not self._halt.wait(0.02):
            self.sample()

    def sample(self) -> None:
        parent: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    parent[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
        ours, grew = {os.getpid()}, True
        while grew:
            more = {pid for pid, ppid in parent.items() if ppid in ours} - ours
            ours |= more
            grew = bool(more)
        for pid in ours - {os.getpid()}:
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if argv:  # a zombie's is empty: keep what it ran
                self.argv[pid] = argv
        for pattern in self.globs:
            for path in Path("/").glob(pattern.lstrip("/")):
                try:
                    self.texts[str(path)] = path.read_text(errors="replace")
                except OSError:
                    continue

    def shows(self, secret: str) -> list[str]:
        return [where for where, text in [*self.argv.items(), *self.texts.items()] if secret in text]


def test_status_reads_the_blocks_lake(only_block, home):
    import pandas as pd
    from deltalake import write_deltalake

    lake = only_block["lake"]
    write_deltalake(
        lake.table_uri("raw", "status_ds"),
        pd.DataFrame({"id": [1, 2, 3]}),
        storage_options=lake.storage_options,
    )
    proc = run_cli("status", "--json", home=home)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["lake"] == lake.root
    assert out["datasets"]["status_ds"]["tables"]["raw"]["rows"] == 3
    assert only_block["secret"] not in proc.stdout + proc.stderr


def _register_champion(home: Path, model: str) -> None:
    """A real bundle (fitted transform, seeded MLP) registered as version 1 of `model`, @champion."""
    import mlflow

    from loopline.data.contracts import load_contract
    from loopline.packaging.bundle import load_predictor
    from loopline.packaging.registry import log_and_register_bundle

    uri = f"sqlite:///{home / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    bundle = make_bundle(home / "bundle")
    example = pyfunc_frame(demo_rows(3, with_id=False))
    with mlflow.start_run():
        log_and_register_bundle(
            str(bundle),
            model_name=model,
            contract=load_contract(DEMO_CONTRACT),
            input_example=example,
            predictions=load_predictor(bundle).predict(example),
        )
    mlflow.MlflowClient(uri).set_registered_model_alias(model, "champion", "1")


def _score(url: str, rows: int) -> None:
    import httpx

    body = {"dataframe_records": demo_rows(rows, seed=5).to_dict("records")}
    response = httpx.post(f"{url}/invocations", json=body, timeout=60)
    assert response.status_code == 200, response.text


def _predictions(lake: Lake, model: str) -> int:
    from loopline.storage import delta

    table = delta.open_table(lake, lake.table_uri("predictions", model))
    return 0 if table is None else delta.dataset(table).count_rows()


def test_the_model_server_logs_predictions_to_the_blocks_lake(only_block, home):
    """The deployment stage's server (tasks/deployment.py -> loopline/release/deploy.py), a child process:
    the lake reaches it in its environment. (`loopline serve` runs the same server in-process after
    `_export_lake`, which the status test holds.)"""
    from loopline.config import load_config
    from tasks.deployment import start_server, stop_server

    lake, secret = only_block["lake"], only_block["secret"]
    _register_champion(home, "served")
    cfg = load_config(None, [f"home={home}", f"serving.port={free_port()}"])
    with ChildWatch() as watch:
        server = start_server.fn(cfg, "served")
        try:
            _score(server["url"], 3)
        finally:
            stop_server.fn(cfg, server)  # SIGTERM (graceful: the inference log is written out), then waits
    assert _predictions(lake, "served") == 3  # where drift reads them (tasks/drift.py: lake_for)
    assert not (home / "lake" / "predictions").exists()
    assert any("loopline.serving" in argv for argv in watch.argv.values())
    logs = list(home.glob("serving/server-served-*.log"))
    assert logs and [p.name for p in logs if secret in p.read_text(errors="replace")] == []
    assert watch.shows(secret) == []


def test_ddp_workers_checkpoint_into_the_blocks_lake(only_block, home, tmp_path, monkeypatch):
    import numpy as np

    from loopline.config import load_config
    from loopline.train.checkpoint import CheckpointStore
    from loopline.train.ddp import launch_ddp
    from loopline.train.loop import TrainingData
    from loopline.train.preemption import PreemptionWatch
    from loopline.train.topology import Topology
    from tasks.common import lake_for

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the spec and torchrun.log land here
    cfg = load_config(None, [f"home={home}", "training.max_steps=6", "training.checkpoint_every_steps=2"])
    lake = lake_for(cfg)  # what the training task hands run_training: the block's lake
    assert lake.root == only_block["lake"].root
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 4)).astype(np.float32)
    data = TrainingData(X, (X[:, 0] > 0).astype(np.float32), "binary")
    prefix = lake.uri("checkpoints", "ddp", "key")
    spec = {"config": cfg.model_dump(mode="json"), "checkpoint_prefix": prefix, "checkpoint_meta": {}}
    with ChildWatch(f"{tmp_path}/loopline-ddp-*/*.json", f"{tmp_path}/loopline-ddp-*/*.log") as watch:
        with PreemptionWatch() as preemption:
            outcome = launch_ddp(
                spec, data, lake=lake, topology=Topology(nodes=1, devices=1), watch=preemption
            )
    assert outcome.steps == 6
    assert [step for step, _ in CheckpointStore(lake, prefix).list_steps()][-1] == 6
    assert any("loopline.train.worker" in argv for argv in watch.argv.values())
    assert watch.texts and watch.shows(only_block["secret"]) == []


def test_python_m_loopline_train_never_reads_another_lake(only_block, home):
    """It cannot load a block (no Prefect in the core): exit 2, naming the block, before any training."""
    proc = subprocess.run(
        [sys.executable, "-m", "loopline.train", "--dataset", "nowhere"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"LOOPLINE_LAKE_BLOCK={only_block['name']!r}" in proc.stderr and "Traceback" not in proc.stderr


def test_a_block_name_the_api_does_not_know_is_a_user_error(block, home):
    from blocks.lake import resolve_lake
    from loopline.errors import ConfigError

    with pytest.raises(ConfigError, match="LOOPLINE_LAKE_BLOCK='no-such-lake'"):
        resolve_lake(str(home), "no-such-lake")
