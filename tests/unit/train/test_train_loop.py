"""The training loop on synthetic tensors: exact resume, preemption, early stopping, data order, metrics."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from loopline.config import TrainingConfig
from loopline.errors import ConfigError
from loopline.storage.lake import Lake
from loopline.train.checkpoint import CheckpointStore
from loopline.train.data import BatchOrder
from loopline.train.loop import TrainingData, make_lr_lambda, train_loop
from loopline.train.metrics import roc_auc
from loopline.train.preemption import Preempted, PreemptionWatch

CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one intra-op thread is faster, and immune to a busy machine's oversubscription."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make_data(task: str, n: int = 600, d: int = 6, seed: int = 0) -> TrainingData:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float32)
    score = X @ rng.standard_normal(d) + 0.3 * rng.standard_normal(n)
    if task == "binary":
        y = (score > 0).astype(np.float32)
    elif task == "multiclass":
        y = np.digitize(score, [-0.5, 0.5]).astype(np.int64)
    else:
        y = (50 + 10 * score).astype(np.float32)
    cut = int(n * 0.8)
    return TrainingData(
        X[:cut], y[:cut], task, X[cut:], y[cut:], n_classes=3 if task == "multiclass" else None
    )


def cfg(**overrides) -> TrainingConfig:
    base = dict(
        max_steps=40,
        batch_size=32,
        hidden_sizes=[16],
        dropout=0.1,  # dropout draws from the global RNG: resume must restore it
        checkpoint_every_steps=10,
        eval_every_steps=15,
        log_every_steps=10,
        keep_last_checkpoints=10,
    )
    return TrainingConfig(**{**base, **overrides})


def store_at(tmp_path, name: str) -> CheckpointStore:
    lake = Lake(root=str(tmp_path / "lake"))
    return CheckpointStore(lake, lake.uri("checkpoints", "m", name), keep_last=10)


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_resume_from_any_checkpoint_is_bit_identical(tmp_path, task):
    data = make_data(task)
    reference = train_loop(cfg(), data, store=None, device=CPU)
    store = store_at(tmp_path, task)
    train_loop(cfg(), data, store=store, device=CPU)
    steps = [s for s, _ in store.list_steps()]
    assert steps == [10, 20, 30, 40]
    for step, uri in store.list_steps():  # pretend the run died right after the checkpoint at step 20
        if step > 20:
            store.lake.delete(uri)
    resumed = train_loop(cfg(), data, store=store, device=CPU)
    assert resumed.resumed_from_step == 20
    assert resumed.steps == 40
    assert resumed.state_sha256 == reference.state_sha256
    assert resumed.val_metrics == reference.val_metrics


def test_a_finished_run_does_no_more_work(tmp_path):
    data = make_data("binary")
    store = store_at(tmp_path, "done")
    first = train_loop(cfg(), data, store=store, device=CPU)
    again = train_loop(cfg(), data, store=store, device=CPU)
    assert again.resumed_from_step == 40 and again.steps == 40
    assert again.state_sha256 == first.state_sha256
    assert again.checkpoint_uri == first.checkpoint_uri


def test_preemption_checkpoints_at_the_current_step_and_resumes_exactly(tmp_path):
    data = make_data("binary")
    reference = train_loop(cfg(), data, store=None, device=CPU)
    store = store_at(tmp_path, "preempt")
    watch = PreemptionWatch(handle_sigterm=False)

    calls = itertools.count(1)

    def on_metrics(step, metrics):
        if step == 10 and next(calls) == 1:
            watch.request("test notice")

    with pytest.raises(Preempted) as info:
        train_loop(cfg(), data, store=store, device=CPU, watch=watch, on_metrics=on_metrics)
    assert info.value.step == 10 and info.value.checkpoint_uri.endswith("step-00000010.pt")
    resumed = train_loop(cfg(), data, store=store, device=CPU)
    assert resumed.resumed_from_step == 10
    assert resumed.state_sha256 == reference.state_sha256


def test_spot_notice_file_triggers_preemption(tmp_path):
    notice = tmp_path / "spot-notice"
    notice.write_text("terminate at 12:00")
    store = store_at(tmp_path, "spot")
    with PreemptionWatch(spot_notice_file=str(notice), handle_sigterm=False, poll_seconds=0.05) as watch:
        assert watch.requested and "spot notice file" in watch.requested
        with pytest.raises(Preempted):
            train_loop(cfg(), make_data("binary"), store=store, device=CPU, watch=watch)
    assert [s for s, _ in store.list_steps()] == [1]  # stopped after the first step, checkpointed


def test_early_stopping_keeps_the_best_weights(tmp_path):
    data = make_data("binary")
    config = cfg(
        max_steps=400,
        eval_every_steps=5,
        early_stopping_patience=2,
        lr=0.05,
        early_stopping_metric="val_loss",
    )
    store = store_at(tmp_path, "early")
    result = train_loop(config, data, store=store, device=CPU)
    assert result.stopped_early and result.steps < 400
    latest = store.load_latest()
    assert latest.state["finished"] and latest.state["stopped_early"]
    from loopline.train.state import state_sha256

    assert result.state_sha256 == state_sha256(latest.state["best_model"])
    again = train_loop(config, data, store=store, device=CPU)
    assert again.state_sha256 == result.state_sha256 and again.steps == result.steps


def test_a_fixed_step_run_ends_with_its_best_weights_and_reports_their_metrics():
    """Few rows, many full-batch steps, a wide net: the last step is overfitted (what a user's small dataset
    met: sklearn's diabetes ended at val r2 -0.12 where step 20 had 0.45). By default the run ends with the
    best evaluated weights, all steps run, and the metrics reported are those weights'; off, the last's."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((120, 8)).astype(np.float32)
    y = (X[:, 0] + rng.standard_normal(120)).astype(np.float32)  # mostly noise: easy to overfit
    data = TrainingData(X[:60], y[:60], "regression", X[60:], y[60:])
    seen: list[float] = []

    def on_metrics(step, metrics):
        if "val_loss" in metrics:
            seen.append(metrics["val_loss"])

    config = dict(
        max_steps=300, batch_size=64, hidden_sizes=[256, 256], dropout=0.0, lr=0.01, eval_every_steps=1
    )
    kept = train_loop(cfg(**config), data, store=None, device=CPU, on_metrics=on_metrics)
    assert kept.steps == 300 and not kept.stopped_early
    assert kept.val_metrics["val_loss"] == pytest.approx(min(seen)) and min(seen) < seen[-1] * 0.8
    last = train_loop(cfg(**config, keep_best_weights=False), data, store=None, device=CPU)
    assert last.val_metrics["val_loss"] == pytest.approx(seen[-1])
    assert kept.val_metrics["r2"] > last.val_metrics["r2"]


def test_unknown_early_stopping_metric_is_a_config_error():
    with pytest.raises(ConfigError, match="early_stopping_metric"):
        train_loop(
            cfg(early_stopping_patience=2, early_stopping_metric="rmse"),
            make_data("binary"),
            store=None,
            device=CPU,
        )


def test_models_learn_each_task():
    for task, metric, good in (
        ("binary", "roc_auc", 0.9),
        ("multiclass", "accuracy", 0.7),
        ("regression", "r2", 0.8),
    ):
        result = train_loop(cfg(max_steps=150, dropout=0.0), make_data(task, n=2000), store=None, device=CPU)
        assert result.val_metrics[metric] > good, (task, result.val_metrics)


def test_batch_order_covers_every_row_once_per_epoch_and_shards_are_disjoint():
    single = BatchOrder(103, 10, seed=5)
    assert single.steps_per_epoch == 11
    epoch0 = torch.cat([single.batch_indices(s) for s in range(11)])
    assert sorted(epoch0.tolist()) == list(range(103))
    epoch1 = torch.cat([single.batch_indices(s) for s in range(11, 22)])
    assert not torch.equal(epoch0, epoch1)
    assert torch.equal(BatchOrder(103, 10, seed=5).batch_indices(13), single.batch_indices(13))  # stateless
    ranks = [BatchOrder(103, 10, seed=5, rank=r, world_size=2) for r in range(2)]
    shards = [set(torch.cat([o.batch_indices(s) for s in range(o.steps_per_epoch)]).tolist()) for o in ranks]
    assert not shards[0] & shards[1] and len(shards[0]) == len(shards[1]) == 51


def test_lr_schedule_warms_up_then_decays():
    cosine = make_lr_lambda("cosine", total=100, warmup=10)
    assert cosine(0) == pytest.approx(0.1) and cosine(9) == pytest.approx(1.0)
    assert cosine(10) == pytest.approx(1.0) and cosine(100) == pytest.approx(0.1)
    step = make_lr_lambda("step", total=100, warmup=0)
    assert step(10) == 1.0 and step(60) == pytest.approx(0.1) and step(90) == pytest.approx(0.01)
    assert make_lr_lambda("none", total=100, warmup=0)(50) == 1.0


def test_roc_auc_matches_pairwise_definition():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 5, 200).astype(float)  # many ties
    labels = rng.random(200) < 0.4
    pos, neg = scores[labels], scores[~labels]
    pairwise = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (
        len(pos) * len(neg)
    )
    assert roc_auc(scores, labels) == pytest.approx(pairwise)
    assert np.isnan(roc_auc(scores, np.zeros(200, dtype=bool)))


def test_sigterm_is_caught_then_handed_on_to_the_host_handler():
    """Under Prefect the host's handler turns SIGTERM into a cancellation: it must still get the signal,
    after the checkpoint. (A subprocess: SIGTERM marks the whole process as terminating.)"""
    import subprocess
    import sys

    code = """
import os, signal
from loopline.train.preemption import PreemptionWatch, process_is_terminating
calls = []
signal.signal(signal.SIGTERM, lambda *a: calls.append("host"))
with PreemptionWatch() as watch:
    os.kill(os.getpid(), signal.SIGTERM)
    assert watch.requested == "SIGTERM" and calls == [] and process_is_terminating()
assert calls == ["host"], calls
with PreemptionWatch() as again:  # a retry in this process stops at once
    assert again.requested.startswith("SIGTERM")
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr
