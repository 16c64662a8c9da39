"""`loopline status` reads the embedded registry with sqlite3 instead of MLflow's client (2.5 s of imports
and store set-up): on a real MLflow store it finds exactly what MLflow's client finds, and it never
imports MLflow."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from loopline.monitoring import status

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def registry(tmp_path) -> Path:
    """Two models with aliases, a deleted version, runs with start-time ties, a deleted run, NaN and
    step-wise metrics; a model without versions."""
    from mlflow import MlflowClient

    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    for model in ("alpha", "beta"):
        experiment = client.create_experiment(
            f"loopline-{model}", artifact_location=(tmp_path / "a").as_uri()
        )
        runs = []
        for i in range(7):
            run = client.create_run(experiment, run_name=f"{model}-{i}", start_time=1000 + i // 2)
            client.log_metric(run.info.run_id, "val_loss", 0.5 + i, step=0)
            client.log_metric(run.info.run_id, "val_loss", 0.1 + i, step=1)
            client.log_metric(run.info.run_id, "test_auc", float("nan"))
            client.log_metric(run.info.run_id, "train_loss", 1.0)
            client.set_terminated(run.info.run_id)
            runs.append(run)
        client.delete_run(runs[-1].info.run_id)
        client.create_registered_model(model)
        for run in runs[:4]:
            client.create_model_version(model, source=f"runs:/{run.info.run_id}/m", run_id=run.info.run_id)
        client.delete_model_version(model, "4")
        client.set_registered_model_alias(model, "champion", "3")
        client.set_registered_model_alias(model, "previous", "2")
    client.set_registered_model_alias("beta", "challenger", "1")
    client.create_registered_model("empty")
    return db


def test_the_sqlite_reader_finds_what_mlflow_finds(registry):
    for only in (None, "beta", "empty", "unknown"):
        fast = status._registry_from_sqlite(registry, only)
        slow = status._registry_from_mlflow(f"sqlite:///{registry}", only)
        assert repr(fast) == repr(slow), only  # repr: NaN metrics compare equal, key order too
    beta = status._registry_from_sqlite(registry, "beta")["beta"]
    assert beta["aliases"] == {"champion": 3, "previous": 2, "challenger": 1} and beta["latest_version"] == 3
    # newest first (pairs tie on start time: MLflow orders those by run id, as the reader does, checked
    # above); the deleted beta-6 left out
    names = [r["name"] for r in beta["last_runs"]]
    assert [set(names[:2]), set(names[2:4])] == [{"beta-4", "beta-5"}, {"beta-2", "beta-3"}]
    assert len(names) == 5 and names[4] in ("beta-0", "beta-1")
    assert set(beta["last_runs"][0]["metrics"]) == {"val_loss", "test_auc"}  # train_* not shown


def test_status_reads_the_registry_without_importing_mlflow(registry, tmp_path):
    code = (
        "import sys\nfrom loopline.config import LifecycleConfig\n"
        "from loopline.monitoring.status import collect_status\n"
        f"out = collect_status(LifecycleConfig(home={str(tmp_path)!r}))\n"
        "print(sorted(out['models']), out['models']['alpha']['champion_version'], 'mlflow' in sys.modules)"
    )
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{registry}", "LOOPLINE_HOME": str(tmp_path), "PATH": ""}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["['alpha',", "'beta',", "'empty']", "3", "False"], out.stderr[-2000:]


def test_the_model_servers_sqlite_reader_finds_what_mlflow_finds(registry):
    """loopline.serving.light_registry reads the same store through the same helper (mlflow_sqlite)."""
    from mlflow import MlflowClient

    from loopline.errors import ModelError
    from loopline.serving.light_registry import SqliteRegistry, light_registry

    uri = f"sqlite:///{registry}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    light = light_registry(uri)
    assert isinstance(light, SqliteRegistry)
    client.set_model_version_tag("beta", "1", "loopline.rollout", '{"weight": 0.5}')
    for model, alias in (("alpha", "champion"), ("beta", "previous"), ("beta", "challenger")):
        mv = client.get_model_version_by_alias(model, alias)
        assert light.alias(model, alias) == (str(mv.version), dict(mv.tags)), (model, alias)
    assert light.alias("alpha", "challenger") is None and light.alias("nobody", "champion") is None
    for version in ("1", "2", "3"):
        assert light.download_uri("beta", version) == client.get_model_version_download_uri("beta", version)
    with pytest.raises(ModelError, match="no version 4"):  # deleted: MLflow keeps its row, marked
        light.download_uri("beta", "4")
