"""A model registered before the regroup and before the loader-module format (a cloudpickled
`loopline.pyfunc.LooplineModel` whose artifacts hold the bundle) still loads and predicts the same through
every loopline path (scoring, infra validation, the model server), and none of them unpickles it: an audit
hook on the stdlib unpickler (`pickle.find_class`) sees nothing, while MLflow's own loader, the control,
resolves `LooplineModel` through it."""

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.serving_support import pyfunc_frame

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "legacy_model"
_unpickled: list[tuple[str, str]] = []


def _record_unpickling(event: str, args: tuple) -> None:
    if event == "pickle.find_class":  # every global a stdlib/cloudpickle unpickler resolves
        _unpickled.append(tuple(args))


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
    sys.addaudithook(_record_unpickling)  # audit hooks cannot be removed: it only appends to a list
    return {"tracking_uri": tracking_uri, "home": home, "version": version.version, "client": client}


def _expected() -> np.ndarray:
    return np.asarray(json.loads((FIXTURE / "expected_predictions.json").read_text()))


def _rows() -> pd.DataFrame:
    return pyfunc_frame(pd.read_csv(FIXTURE / "rows.csv"))


def test_the_fixture_names_the_old_paths():
    assert b"loopline.pyfunc" in (FIXTURE / "model" / "python_model.pkl").read_bytes()
    meta = json.loads((FIXTURE / "model" / "artifacts" / "bundle" / "bundle.json").read_text())
    assert meta["factory"] == "loopline.models:mlp"
    assert not (FIXTURE / "model" / "code").exists()


def test_every_loopline_path_loads_the_bundle_and_never_unpickles(registered, tmp_path):
    from loopline.packaging.safe_load import FORMAT_LEGACY, check_version, download_bundle, load_version
    from loopline.release.infra_validation import check_serving, request_body
    from loopline.serving.model import load_bundle_model
    from loopline.serving.registry_source import RegistrySource

    uri, version = registered["tracking_uri"], registered["version"]
    _unpickled.clear()
    plan, root = check_version(registered["client"], "legacy", version, tracking_uri=uri)
    assert plan.format == FORMAT_LEGACY and plan.bundle_path == "artifacts/bundle"
    assert "legacy pickle not loaded" in plan.loader

    predictor, _ = load_version("legacy", version, tracking_uri=uri)  # evaluation and promotion
    np.testing.assert_allclose(predictor.predict(_rows()), _expected(), rtol=1e-6)
    # infra validation: the caller downloads the gated bundle, its child runs check_serving on it
    bundle = download_bundle(root, plan, tmp_path / "infra", tracking_uri=uri)
    served, _timings = check_serving(
        bundle, request_body(_rows()), model="legacy", version=version, task="binary", classes=["0", "1"]
    )
    np.testing.assert_allclose(served, _expected(), rtol=1e-6)
    source = RegistrySource(uri, registered["home"] / "serving-cache")  # the model server
    loaded = load_bundle_model(
        source.download("legacy", version), name="legacy", version=version, alias="champion", device="cpu"
    )
    np.testing.assert_allclose(loaded.predictor.predict(_rows()), _expected(), rtol=1e-6)
    assert _unpickled == []

    # the control: MLflow's loader unpickles the very same model, and the hook sees it
    import mlflow.pyfunc

    root = registered["client"].get_model_version_download_uri("legacy", version)
    mlflow.pyfunc.load_model(
        mlflow.artifacts.download_artifacts(
            artifact_uri=root, dst_path=str(tmp_path / "control"), tracking_uri=uri
        )
    )
    assert ("loopline.pyfunc", "LooplineModel") in _unpickled


def test_infra_validation_of_the_legacy_model_passes_in_its_own_process(registered):
    from loopline.packaging.bundle import load_predictor
    from loopline.release.infra_validation import sample_rows, validate_infra

    contract = load_predictor(FIXTURE / "model" / "artifacts" / "bundle").contract
    rows = sample_rows(contract, pd.read_csv(FIXTURE / "rows.csv", parse_dates=["signup_at"]), 20)
    result = validate_infra(
        f"models:/legacy/{registered['version']}", rows, contract, tracking_uri=registered["tracking_uri"]
    )
    assert result["ok"], result["reason"]
    assert result["loader"] == "loopline.serving.model.load_bundle_model (legacy pickle not loaded)"
