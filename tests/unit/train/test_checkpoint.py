"""Checkpoints: every RNG round-trips, writes are atomic, the last K are kept, a corrupt latest falls back."""

from __future__ import annotations

import logging
import os
import random

import numpy as np
import pytest
import torch

from loopline.storage.lake import Lake
from loopline.train.async_writer import AsyncCheckpointWriter
from loopline.train.checkpoint import CheckpointStore
from loopline.train.state import capture_rng_state, restore_rng_state, state_sha256


@pytest.fixture
def store(tmp_path) -> CheckpointStore:
    lake = Lake(root=str(tmp_path / "lake"))
    return CheckpointStore(lake, lake.uri("checkpoints", "m", "key"), keep_last=3)


def _state(step: int, **extra) -> dict:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(4, 3)).sum().backward()
    optimizer.step()
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "rng": capture_rng_state(),
        **extra,
    }


def _draws() -> tuple:
    return (
        torch.rand(5).tolist(),
        np.random.rand(5).tolist(),
        [random.random() for _ in range(5)],
        np.random.randn(3).tolist(),
    )


def test_round_trip_restores_every_rng_and_the_optimizer(store):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.randn(1)  # leaves a cached Gaussian in numpy's legacy state
    state = _state(7, best_metric=0.25, config={"lr": 0.1, "hidden_sizes": [4, 2]})
    expected = _draws()
    uri = store.save(state)
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    loaded = store.load(uri)
    restore_rng_state(loaded["rng"])
    assert _draws() == expected
    assert (
        loaded["step"] == 7 and loaded["best_metric"] == 0.25 and loaded["config"]["hidden_sizes"] == [4, 2]
    )
    assert state_sha256(loaded["model"]) == state_sha256(state["model"])
    for key, value in state["optimizer"]["state"][0].items():
        assert torch.equal(loaded["optimizer"]["state"][0][key], value)


def test_keeps_only_the_last_k(store):
    for step in (10, 20, 30, 40, 50):
        store.save(_state(step))
    assert [s for s, _ in store.list_steps()] == [30, 40, 50]
    assert store.load_latest().step == 50


def test_crash_during_a_write_leaves_the_previous_checkpoint_usable(store, monkeypatch):
    store.save(_state(10))

    def crash(src, dst):  # the process dies between writing the temp file and renaming it
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        store.save(_state(20))
    monkeypatch.undo()
    leftovers = [p for p in os.listdir(store.prefix_uri) if ".tmp-" in p]
    assert leftovers, "the half-written temp file should still be there"
    latest = store.load_latest()
    assert latest.step == 10
    assert store.remove_stale_temp_files() == len(leftovers)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "incomplete"])
def test_corrupt_latest_falls_back_to_the_previous_with_a_warning(store, caplog, damage):
    store.save(_state(10))
    uri = store.save(_state(20))
    if damage == "truncate":
        data = open(uri, "rb").read()
        open(uri, "wb").write(data[: len(data) // 2])
    elif damage == "garbage":
        open(uri, "wb").write(os.urandom(2048))
    else:
        store.lake.put_bytes(uri, _torch_bytes({"step": 20}))
    with caplog.at_level(logging.WARNING, logger="loopline.train.checkpoint"):
        latest = store.load_latest()
    assert latest.step == 10
    assert any("step-00000020.pt" in r.getMessage() for r in caplog.records)


def _torch_bytes(obj) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_no_checkpoint_and_clear(store):
    assert store.load_latest() is None
    store.save(_state(5))
    assert store.clear() == 1
    assert store.load_latest() is None


def test_async_writer_snapshots_state_before_it_changes(store):
    weights = {"w": torch.zeros(3)}
    writer = AsyncCheckpointWriter(store)
    writer.submit({"model": weights, "optimizer": {}, "step": 1, "rng": capture_rng_state()})
    weights["w"].add_(5.0)  # the training loop keeps updating the live tensors in place
    uri = writer.wait()
    writer.close()
    assert torch.equal(store.load(uri)["model"]["w"], torch.zeros(3))


def test_async_writer_surfaces_a_failed_write(store, monkeypatch):
    writer = AsyncCheckpointWriter(store)

    def broken(payload, path):
        raise OSError("disk full")

    monkeypatch.setattr("loopline.train.checkpoint._save_local_atomically", broken)
    writer.submit(_state(3))
    with pytest.raises(OSError, match="disk full"):
        writer.wait()
    writer.close()


def test_state_sha256_sees_any_bit_flip():
    state = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.tensor(1.5)}
    flipped = {k: v.clone() for k, v in state.items()}
    flipped["a"].view(torch.int32)[0, 0] ^= 1
    assert state_sha256(state) == state_sha256({k: v.clone() for k, v in state.items()})
    assert state_sha256(state) != state_sha256(flipped)
