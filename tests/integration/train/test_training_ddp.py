"""DDP with 2 CPU processes (gloo) under torchrun: trains, stops on a spot notice with a checkpoint,
resumes on the next run and ends bit-identical to an uninterrupted 2-process run."""

from __future__ import annotations

import pytest

from loopline.config import LifecycleConfig
from loopline.storage.lake import Lake
from loopline.train import Preempted, run_training
from loopline.train.sample_data import demo_features

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    home = tmp_path_factory.mktemp("ddp-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOOPLINE_HOME", str(home))
        mp.delenv("LOOPLINE_LAKE_URI", raising=False)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
        mp.setenv("LOOPLINE_CODE_VERSION", "ddp-test")
        mp.setenv("OMP_NUM_THREADS", "1")
        lake = Lake.from_env(str(home))
        demo_features(lake, 1200)
        yield {"home": home, "lake": lake}


def config(home, notice=None) -> LifecycleConfig:
    training = {
        "devices": 2,
        "device": "cpu",
        "max_steps": 200,
        "batch_size": 16,
        "dropout": 0.1,
        "checkpoint_every_steps": 10,
        "log_every_steps": 10,
        "eval_every_steps": 100,
        "spot_notice_file": notice,
        "spot_poll_seconds": 0.05,
    }
    return LifecycleConfig(home=str(home), training=training)


def test_ddp_trains_stops_on_a_spot_notice_and_resumes_exactly(env, tmp_path):
    reference = run_training(config(env["home"]), "demo", lake=env["lake"], model_name="ddp_ref")
    assert reference["devices"] == 2 and reference["steps"] == 200 and reference["resumed_from_step"] == 0

    notice = tmp_path / "spot-notice"

    def raise_notice(progress: dict) -> None:  # the cloud announces a reclaim once training is under way
        if progress["step"] >= 30:
            notice.write_text("instance-action: terminate")

    with pytest.raises(Preempted) as info:
        run_training(
            config(env["home"], str(notice)),
            "demo",
            lake=env["lake"],
            model_name="ddp_spot",
            on_progress=raise_notice,
        )
    stopped_at = info.value.step
    assert 30 <= stopped_at < 200 and info.value.checkpoint_uri.endswith(f"step-{stopped_at:08d}.pt")

    notice.unlink()  # the next machine has no notice
    resumed = run_training(config(env["home"], str(notice)), "demo", lake=env["lake"], model_name="ddp_spot")
    assert resumed["resumed_from_step"] == stopped_at
    assert resumed["steps"] == 200 and resumed["devices"] == 2
    assert resumed["state_sha256"] == reference["state_sha256"]

    from mlflow import MlflowClient

    losses = MlflowClient().get_metric_history(resumed["run_id"], "loss")  # rank 0's metrics, relayed
    assert {m.step for m in losses} >= {10, stopped_at, 200}
