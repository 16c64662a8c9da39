"""Checkpoints on a real S3 endpoint (moto_server): one PUT per checkpoint, keep-last-K, corrupt fallback,
and a training run that resumes from S3."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from loopline.config import TrainingConfig
from loopline.storage.lake import Lake
from loopline.train.checkpoint import CheckpointStore
from loopline.train.loop import TrainingData, train_loop

pytestmark = pytest.mark.integration


@pytest.fixture
def s3_lake(moto_s3) -> Lake:
    lake = Lake(
        root="s3://loopline-ckpt/lake",
        endpoint_url=moto_s3["endpoint_url"],
        region=moto_s3["region"],
        access_key_id=moto_s3["access_key_id"],
        secret_access_key=moto_s3["secret_access_key"],
    )
    client = lake.s3_client()
    if "loopline-ckpt" not in [b["Name"] for b in client.list_buckets().get("Buckets", [])]:
        client.create_bucket(Bucket="loopline-ckpt")
    return lake


def test_training_checkpoints_to_s3_and_resumes_exactly(s3_lake, caplog):
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 5)).astype(np.float32)
    y = (X[:, 0] - X[:, 1] > 0).astype(np.float32)
    data = TrainingData(X, y, "binary")
    cfg = TrainingConfig(
        max_steps=30, batch_size=32, hidden_sizes=[8], checkpoint_every_steps=10, keep_last_checkpoints=3
    )
    reference = train_loop(cfg, data, store=None, device=torch.device("cpu"))

    store = CheckpointStore(s3_lake, s3_lake.uri("checkpoints", "m", "s3key"), keep_last=3)
    train_loop(cfg, data, store=store, device=torch.device("cpu"))
    assert [s for s, _ in store.list_steps()] == [10, 20, 30]
    assert all(
        uri.startswith("s3://loopline-ckpt/lake/checkpoints/m/s3key/step-") for _, uri in store.list_steps()
    )

    # the run "died" after a truncated upload of step 20 (and never wrote 30)
    s3_lake.delete(store.uri_for(30))
    s3_lake.put_bytes(store.uri_for(20), s3_lake.get_bytes(store.uri_for(20))[:500])
    with caplog.at_level("WARNING", logger="loopline.train.checkpoint"):
        assert store.load_latest().step == 10
    assert any("step-00000020.pt" in r.getMessage() for r in caplog.records)
    resumed = train_loop(cfg, data, store=store, device=torch.device("cpu"))
    assert resumed.resumed_from_step == 10 and resumed.state_sha256 == reference.state_sha256
    assert [s for s, _ in store.list_steps()] == [10, 20, 30]  # the corrupt object was overwritten
