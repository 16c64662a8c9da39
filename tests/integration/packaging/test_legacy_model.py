"""A model registered before the regroup still loads and predicts the same, through MLflow's pyfunc
(a fresh process, as `mlflow models serve` would) and through the model server's bundle loader."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.serving_support import pyfunc_frame

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "legacy_model"
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def registered(tmp_path_factory) -> dict:
    import mlflow
    from mlflow import MlflowClient

    home = tmp_path_factory.mktemp("legacy")
    tracking_uri = f"sqlite:///{home / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    experiment = client.create_experiment("legacy", artifact_location=(home / "artifacts").as_uri())
    run = client.create_run(experiment)
    client.log_artifacts(run.info.run_id, str(FIXTURE / "model"), "model")
    client.set_terminated(run.info.run_id)
    mlflow.set_registry_uri(tracking_uri)
    client.create_registered_model("legacy")
    version = client.create_model_version("legacy", f"runs:/{run.info.run_id}/model", run.info.run_id)
    return {"tracking_uri": tracking_uri, "home": home, "version": version.version}


def _expected() -> np.ndarray:
    return np.asarray(json.loads((FIXTURE / "expected_predictions.json").read_text()))


def _rows() -> pd.DataFrame:
    return pyfunc_frame(pd.read_csv(FIXTURE / "rows.csv"))


def test_the_fixture_names_the_old_paths():
    assert b"loopline.pyfunc" in (FIXTURE / "model" / "python_model.pkl").read_bytes()
    meta = json.loads((FIXTURE / "model" / "artifacts" / "bundle" / "bundle.json").read_text())
    assert meta["factory"] == "loopline.models:mlp"
    assert not (FIXTURE / "model" / "code").exists()


def test_pyfunc_load_model_in_a_fresh_process(registered):
    code = (
        "import json, sys, pandas as pd, mlflow.pyfunc\n"
        "from tests.serving_support import pyfunc_frame\n"
        f"model = mlflow.pyfunc.load_model('models:/legacy/{registered['version']}')\n"
        f"rows = pyfunc_frame(pd.read_csv({str(FIXTURE / 'rows.csv')!r}))\n"
        "print(json.dumps([float(p) for p in model.predict(rows)]))"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": registered["tracking_uri"]}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    np.testing.assert_allclose(json.loads(out.stdout.strip().splitlines()[-1]), _expected(), rtol=1e-6)


def test_the_model_server_loads_the_legacy_bundle(registered):
    from loopline.serving.model import load_bundle_model
    from loopline.serving.registry_source import RegistrySource

    source = RegistrySource(registered["tracking_uri"], registered["home"] / "serving-cache")
    bundle_dir = source.download("legacy", registered["version"])
    loaded = load_bundle_model(
        bundle_dir, name="legacy", version=registered["version"], alias="champion", device="cpu"
    )
    np.testing.assert_allclose(loaded.predictor.predict(_rows()), _expected(), rtol=1e-6)
