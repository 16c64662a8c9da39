"""Never lose work: a training process killed with SIGKILL at a random step, or stopped with SIGTERM,
resumes on the next run and ends bit-identical to an uninterrupted run (CPU, deterministic)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loopline.storage.lake import Lake
from loopline.train.checkpoint import CheckpointStore
from loopline.train.sample_data import demo_features

pytestmark = pytest.mark.integration

MAX_STEPS = 1500
SETS = [
    f"training.max_steps={MAX_STEPS}",
    "training.batch_size=32",
    "training.hidden_sizes=[32]",
    "training.dropout=0.1",
    "training.checkpoint_every_steps=10",
    "training.keep_last_checkpoints=3",
    "training.eval_every_steps=250",
    "training.log_every_steps=100",
]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    home = tmp_path_factory.mktemp("kill-home")
    environ = {
        **os.environ,
        "LOOPLINE_HOME": str(home),
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
        "LOOPLINE_CODE_VERSION": "kill-test",  # other edits to the tree must not change the run key mid-test
        "OMP_NUM_THREADS": "1",  # the same intra-op threads in every process: the same float sums
        "PYTHONUNBUFFERED": "1",
    }
    environ.pop("LOOPLINE_LAKE_URI", None)
    lake = Lake(root=str(home / "lake"))
    demo_features(lake, 1500)
    return {"home": home, "lake": lake, "environ": environ}


def start(env, model: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "loopline.train", "--dataset", "demo", "--model", model, "--json"]
    for item in SETS:
        cmd += ["--set", item]
    return subprocess.Popen(
        cmd, env=env["environ"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, dict | None, str]:
    out, err = proc.communicate(timeout=timeout)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return proc.returncode, (json.loads(lines[-1]) if lines else None), err


def store_for(env, model: str) -> CheckpointStore:
    folder = env["lake"].uri("checkpoints", model)
    runs = [p for p in Path(folder).iterdir()] if Path(folder).exists() else []
    assert len(runs) <= 1
    return CheckpointStore(env["lake"], str(runs[0]) if runs else folder, keep_last=3)


def wait_for_checkpoint(env, model: str, proc: subprocess.Popen, at_least: int, timeout: float = 180) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"training ended before step {at_least}: {proc.communicate()[1][-2000:]}"
        folder = Path(env["lake"].uri("checkpoints", model))
        steps = [int(p.name[5:13]) for p in folder.rglob("step-*.pt")] if folder.exists() else []
        if steps and max(steps) >= at_least:
            return max(steps)
        time.sleep(0.005)
    raise TimeoutError(f"no checkpoint at step >= {at_least} within {timeout}s")


def train_in_process(env, model: str) -> dict:
    """A run in this process with the subprocesses' settings (one intra-op thread, same env)."""
    import torch

    from loopline.config import load_config
    from loopline.train import run_training

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            for name in ("LOOPLINE_HOME", "MLFLOW_TRACKING_URI", "LOOPLINE_CODE_VERSION"):
                mp.setenv(name, env["environ"][name])
            cfg = load_config(None, [f"home={env['home']}", *SETS])
            return run_training(cfg, "demo", lake=env["lake"], model_name=model)
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def reference(env) -> dict:
    """The uninterrupted run."""
    result = train_in_process(env, "demo_ref")
    assert result["steps"] == MAX_STEPS and result["resumed_from_step"] == 0
    return result


def test_sigkill_at_a_random_step_then_rerun_is_bit_identical(env, reference):
    kill_after = random.Random().randint(20, MAX_STEPS // 2)
    proc = start(env, "demo_kill")
    seen = wait_for_checkpoint(env, "demo_kill", proc, kill_after)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    latest = store_for(env, "demo_kill").load_latest().step
    assert latest >= seen and latest < MAX_STEPS

    result = train_in_process(env, "demo_kill")  # `loopline train` again after the crash
    assert result["resumed_from_step"] == latest > 0, f"killed after step {kill_after}"
    assert result["steps"] == MAX_STEPS
    assert result["state_sha256"] == reference["state_sha256"]

    from mlflow import MlflowClient

    client = MlflowClient(env["environ"]["MLFLOW_TRACKING_URI"])
    runs = client.search_runs(
        [client.get_experiment_by_name("loopline-demo_kill").experiment_id],
        filter_string=f"tags.`loopline.run_key` = '{result['run_key']}'",
    )
    assert [r.info.run_id for r in runs] == [result["run_id"]]  # the killed run's MLflow run was continued


def test_sigterm_checkpoints_within_the_grace_period_and_exits_resumable(env, reference):
    proc = start(env, "demo_term")
    seen = wait_for_checkpoint(env, "demo_term", proc, 100)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code, result, err = finish(proc, timeout=30)  # Prefect's grace before SIGKILL is 30 s
    stopped_in = time.monotonic() - sent
    assert code == 143, err[-3000:]
    assert result["type"] == "Preempted" and "SIGTERM" in result["error"]
    assert stopped_in < 30
    latest = store_for(env, "demo_term").load_latest()
    assert latest.step >= seen and not latest.state["finished"]

    result = train_in_process(env, "demo_term")
    assert result["resumed_from_step"] == latest.step
    assert result["state_sha256"] == reference["state_sha256"]
