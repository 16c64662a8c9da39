"""run_training end to end with a real Delta lake and a real MLflow (SQLite): tracking, registration,
the pyfunc on raw contract rows (in-process and through MLflow's scoring server), idempotent reruns."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from loopline.config import LifecycleConfig, SyntheticConfig
from loopline.data.synthetic import generate_frame
from loopline.storage.lake import Lake
from loopline.train import run_training
from loopline.train.sample_data import build_sample_features, demo_features, tiny_contract, tiny_frame

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """One LOOPLINE_HOME + MLflow DB for the module (creating an MLflow DB costs seconds)."""
    home = tmp_path_factory.mktemp("train-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOOPLINE_HOME", str(home))
        mp.delenv("LOOPLINE_LAKE_URI", raising=False)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
        mp.setenv("LOOPLINE_CODE_VERSION", "test-code")
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        lake = Lake.from_env(str(home))
        demo_features(lake, 1500)
        yield {"home": home, "lake": lake}
        torch.set_num_threads(previous)


def config(home: Path, **training) -> LifecycleConfig:
    base = {
        "max_steps": 30,
        "batch_size": 64,
        "eval_every_steps": 10,
        "log_every_steps": 5,
        "checkpoint_every_steps": 10,
    }
    return LifecycleConfig(home=str(home), training={**base, **training})


def test_training_logs_everything_and_registers_a_pyfunc_that_scores_raw_rows(env):
    import mlflow
    from mlflow import MlflowClient

    progress: list[dict] = []
    result = run_training(config(env["home"]), "demo", lake=env["lake"], on_progress=progress.append)

    assert result["model_name"] == "demo" and result["model_version"] == "1"
    assert result["model_uri"] == "models:/demo/1"
    assert result["steps"] == 30 and result["resumed_from_step"] == 0
    assert result["device"] == "cpu" and result["gpu"] is None
    assert len(result["state_sha256"]) == 64 and result["samples_per_s"] > 0
    assert result["features_version"] == 0 and result["reference_profile"] == "written"
    assert [p["step"] for p in progress] == [5, 10, 15, 20, 25, 30]

    client = MlflowClient()
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["training.lr"] == "0.003" and run.data.params["training.max_steps"] == "30"
    assert run.data.params["evaluation.bootstrap_samples"] == "1000"  # the whole config, not only training
    tags = run.data.tags
    assert tags["data.features_version"] == "0" and tags["data.clean_version"] == "0"
    assert tags["code.version"] == "test-code" and tags["loopline.run_key"] == result["run_key"]
    assert tags["training.device"] == "cpu" and len(tags["contract.hash"]) == 16
    assert tags["loopline.state_sha256"] == result["state_sha256"]
    losses = client.get_metric_history(result["run_id"], "loss")
    assert [m.step for m in losses] == [5, 10, 15, 20, 25, 30]
    eval_steps = {m.step for m in client.get_metric_history(result["run_id"], "val_roc_auc")}
    assert {10, 20, 30} <= eval_steps  # every eval_every_steps, plus each epoch's end
    version = client.get_model_version("demo", "1")
    assert version.run_id == result["run_id"] and not client.get_registered_model("demo").aliases

    # the pyfunc takes raw contract columns; the id and the label may come along and are ignored
    raw = generate_frame(SyntheticConfig(rows=50, seed=123))
    model = mlflow.pyfunc.load_model(result["model_uri"])
    with_extras = np.asarray(model.predict(raw))
    features_only = np.asarray(model.predict(raw.drop(columns=["customer_id", "churned"])))
    assert with_extras.shape == (50,) and ((with_extras >= 0) & (with_extras <= 1)).all()
    np.testing.assert_allclose(with_extras, features_only)
    assert model.metadata.get_input_schema() is not None and model.metadata.saved_input_example_info

    # the same model through MLflow's own scoring server app (what `mlflow models serve` runs)
    from fastapi.testclient import TestClient
    from mlflow.pyfunc import scoring_server

    app = scoring_server.init(model)
    payload = {
        "dataframe_split": json.loads(raw.head(5).to_json(orient="split", date_format="iso", index=False))
    }
    response = TestClient(app).post("/invocations", json=payload)
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(
        np.asarray(response.json()["predictions"], dtype=float), with_extras[:5], rtol=1e-5
    )

    # the bundle inside the model: loadable without MLflow, with the reference profile for drift
    from loopline.packaging.bundle import load_predictor

    local = Path(mlflow.artifacts.download_artifacts(result["model_uri"])) / "data" / "bundle"
    assert {p.name for p in local.iterdir()} >= {
        "model.pt",
        "bundle.json",
        "transform.json",
        "contract.yaml",
        "reference_profile.json",
    }
    predictor = load_predictor(local)
    np.testing.assert_allclose(predictor.predict(raw), with_extras, rtol=1e-6)
    assert predictor.predict_proba(raw).shape == (50, 2)
    assert predictor.meta.data_versions["features_version"] == 0
    assert predictor.meta.extra["state_sha256"] == result["state_sha256"]


def test_rerun_returns_the_finished_run_and_fresh_retrains_to_the_same_weights(env):
    first = run_training(config(env["home"], max_steps=20), "demo", lake=env["lake"], model_name="rerun")
    again = run_training(config(env["home"], max_steps=20), "demo", lake=env["lake"], model_name="rerun")
    assert again["reused_run"] and again["model_version"] == first["model_version"] == "1"
    fresh = run_training(
        config(env["home"], max_steps=20), "demo", lake=env["lake"], model_name="rerun", fresh=True
    )
    assert fresh["model_version"] == "2" and fresh["run_id"] != first["run_id"]
    assert fresh["resumed_from_step"] == 0 and fresh["state_sha256"] == first["state_sha256"]


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_multiclass_and_regression_models_predict_in_label_space(env, task):
    import mlflow

    contract = tiny_contract(task)
    frame = tiny_frame(contract, 2000, seed=1)
    build_sample_features(env["lake"], contract, frame, batch_id=f"tiny-{task}")
    result = run_training(
        config(env["home"], max_steps=150, hidden_sizes=[32]), contract.dataset, lake=env["lake"]
    )
    model = mlflow.pyfunc.load_model(result["model_uri"])
    test = tiny_frame(contract, 300, seed=2)
    predictions = np.asarray(model.predict(test))
    if task == "multiclass":
        assert set(predictions) <= {"low", "mid", "high"}
        assert (predictions == test["target"].to_numpy()).mean() > 0.6
        from loopline.packaging.bundle import load_predictor

        local = Path(mlflow.artifacts.download_artifacts(result["model_uri"])) / "data" / "bundle"
        proba = load_predictor(local).predict_proba(test)
        assert proba.shape == (300, 3)
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    else:
        truth = test["target"].to_numpy()
        r2 = 1 - ((predictions - truth) ** 2).mean() / truth.var()
        assert r2 > 0.7, r2  # the model predicts in the label's units (the standardisation is undone)
        assert pd.Series(predictions).mean() == pytest.approx(truth.mean(), abs=1.5)
