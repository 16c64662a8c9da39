"""kill -9 at fixed points of training, then a rerun: the final state is bit-identical to an uninterrupted run.

The points (loopline/train/loop.py, loopline/train/checkpoint.py): `train.step` (just after an optimizer step,
mid-epoch, a background checkpoint possibly in flight), `checkpoint.before_rename` (the temp file written,
not renamed) and `checkpoint.after_rename` (the new file in place, the old ones not yet pruned). Each try
kills a training process at one point (`LOOPLINE_KILL_AT=point:N`, the Nth hit), then resumes in this
process from what the kill left on disk, and compares `state_sha256` with the uninterrupted run's.
The cheapest setup that runs the real loop: a tiny MLP on seeded tensors, torch alone (no Delta, no MLflow).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from loopline.config import TrainingConfig
from loopline.storage.lake import Lake
from loopline.train.checkpoint import CheckpointStore
from loopline.train.loop import TrainingData, train_loop
from tests.reliability.conftest import rounds

REPO = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")
MAX_STEPS = 50
CHECKPOINT_EVERY = 10  # saves at steps 10, 20, 30, 40 and the final one at 50: five hits of each save point
STEPS_PER_EPOCH = 15  # 480 training rows / 32
# (point, Nth hit, the step the rerun must resume from; None: wherever the last durable checkpoint is)
# The quick rounds take the two save points, which nothing else kills at; tests/integration/train/
# test_training_kill.py already SIGKILLs a run at a random step.
SCHEDULE = [
    ("checkpoint.before_rename", 2, 10),  # step-20's temp file written: the rerun ignores it
    ("checkpoint.after_rename", 5, 50),  # the final, finished checkpoint renamed: nothing left to train
    ("train.step", 23, None),  # mid-epoch 2, a background write of step 20 maybe in flight
    ("checkpoint.before_rename", 5, 40),  # the final checkpoint's temp file
    ("train.step", 7, 0),  # before the first checkpoint: the rerun starts over
    ("checkpoint.after_rename", 1, 10),
    ("checkpoint.before_rename", 1, 0),
    ("train.step", 44, None),
    ("checkpoint.after_rename", 3, 30),
    ("checkpoint.before_rename", 3, 20),
]
assert all(n % STEPS_PER_EPOCH and n % CHECKPOINT_EVERY for p, n, _ in SCHEDULE if p == "train.step")


def config() -> TrainingConfig:
    return TrainingConfig(
        max_steps=MAX_STEPS,
        batch_size=32,
        hidden_sizes=[16],
        dropout=0.1,  # dropout draws from the global RNG: the resume must restore it
        checkpoint_every_steps=CHECKPOINT_EVERY,
        eval_every_steps=15,
        log_every_steps=25,
        keep_last_checkpoints=2,
        seed=7,
    )


def data() -> TrainingData:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((600, 6)).astype(np.float32)
    y = (X @ rng.standard_normal(6) > 0).astype(np.float32)
    return TrainingData(X[:480], y[:480], "binary", X[480:], y[480:])


def store_at(folder: Path) -> CheckpointStore:
    lake = Lake(root=str(folder))
    return CheckpointStore(lake, lake.uri("checkpoints", "m", "run"), keep_last=2)


def train(folder: Path):
    torch.set_num_threads(1)  # the same float sums in the killed process and in this one
    return train_loop(config(), data(), store=store_at(folder), device=CPU)


def child_main() -> None:
    """What the killed process runs: `python -c ... FOLDER` with LOOPLINE_KILL_AT set."""
    train(Path(sys.argv[1]))


def test_kill_9_during_training_then_rerun_is_bit_identical(tmp_path, reliability_report):
    reference = train(tmp_path / "reference")
    assert reference.steps == MAX_STEPS and reference.resumed_from_step == 0
    tries = rounds(2, 10)
    lost = doubled = 0
    resumed = []
    for i, (point, nth, expected_resume) in enumerate(SCHEDULE[:tries]):
        folder = tmp_path / f"try-{i}"
        env = {**os.environ, "LOOPLINE_KILL_AT": f"{point}:{nth}", "OMP_NUM_THREADS": "1"}
        code = "from tests.reliability.test_train_kills import child_main; child_main()"
        proc = subprocess.run(
            [sys.executable, "-c", code, str(folder)], cwd=REPO, env=env, capture_output=True, timeout=180
        )
        assert proc.returncode == -signal.SIGKILL, f"{point}:{nth} did not kill: {proc.stderr[-2000:]}"
        store = store_at(folder)
        if point == "checkpoint.before_rename":
            assert list(Path(store.prefix_uri).glob(".step-*.tmp-*")), "the kill left no temp file"

        rerun = train(folder)  # the rerun after the crash, from what the kill left on disk
        resumed.append(rerun.resumed_from_step)
        if expected_resume is not None:
            assert rerun.resumed_from_step == expected_resume, f"{point}:{nth}"
        lost += rerun.state_sha256 != reference.state_sha256
        doubled += rerun.steps != MAX_STEPS
        assert not list(Path(store.prefix_uri).glob(".step-*.tmp-*"))  # the rerun swept the temp file
        assert len(store.list_steps()) <= 2  # and pruned to keep_last
    reliability_report.add(
        "kill -9 during training, then rerun",
        tries,
        lost=lost,
        doubled=doubled,
        note=f"state_sha256 mismatches {lost}/{tries}; points {sorted({p for p, _, _ in SCHEDULE[:tries]})}; "
        f"resumed from steps {resumed}",
    )
    assert (lost, doubled) == (0, 0)
