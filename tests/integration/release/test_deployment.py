"""The deployment stage on real servers: start when none runs, hot-swap to the new champion confirmed through
/version, and roll back @champion (and the servers) when the new version does not come up healthy."""

from __future__ import annotations

import mlflow
import pytest
from mlflow import MlflowClient

from loopline.config import LifecycleConfig
from loopline.release import deploy
from loopline.release.champion import move_champion
from tests.serving_support import build_registered_model, free_port

pytestmark = pytest.mark.integration


class Broken(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    return build_registered_model(tmp_path_factory.mktemp("deploy-home"), versions=2, rows=2000, max_steps=10)


def test_deploy_starts_swaps_and_rolls_back(registry, prefect_api, monkeypatch):
    from flows.deployment import deployment_flow

    home, model, uri = registry["home"], registry["model"], registry["tracking_uri"]
    monkeypatch.setenv("LOOPLINE_HOME", home)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    cfg = LifecycleConfig(home=home)
    cfg.serving.port = free_port()
    cfg.serving.poll_seconds = 3600  # only /reload moves it: the test sees the deploy stage's own swap
    cfg.serving.confirm_timeout_seconds = 30
    client = MlflowClient(uri)
    v1, v2 = (int(v) for v in registry["versions"])
    try:
        first = deployment_flow(cfg, model=model)
        assert first["started"] and first["deployed"] and first["servers"][0]["version"] == str(v1)
        url = first["servers"][0]["url"]

        move_champion(client, model, v2, expected=v1, action="promote", reason="test")
        second = deployment_flow(cfg, model=model)
        assert not second["started"] and second["deployed"]
        assert deploy.http_json(f"{url}/version")["version"] == str(v2)

        # a version the server cannot load (not a loopline bundle) becomes champion: the stage rolls back
        with mlflow.start_run():
            info = mlflow.pyfunc.log_model(name="model", python_model=Broken(), registered_model_name=model)
        v3 = int(info.registered_model_version)
        move_champion(client, model, v3, expected=v2, action="promote", reason="test")
        third = deployment_flow(cfg, model=model)
        assert not third["deployed"] and not third["servers"][0]["healthy"]
        assert third["rolled_back"]["champion_version"] == v2
        assert int(client.get_model_version_by_alias(model, "champion").version) == v2
        assert deploy.http_json(f"{url}/version")["version"] == str(v2)  # still serving, never went down
    finally:
        deploy.stop_all_servers(home)
    assert not deploy.is_up(url)


def test_a_taken_port_is_named_before_any_server_starts(tmp_path):
    import socket

    from loopline.config import ServingConfig
    from loopline.errors import ConfigError

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"serving.port {port} .* already in use"):
            deploy.start_server(str(tmp_path), "m", ServingConfig(port=port), tracking_uri=None)
    assert not (tmp_path / "serving" / "servers.json").exists()


def test_a_first_champion_that_fails_is_not_rolled_back_to_nothing(registry, prefect_api, monkeypatch):
    """No previous champion: the stage fails with one clear error and @champion stays (no impossible rollback)."""
    from flows.deployment import deployment_flow
    from loopline.errors import ModelError

    home, uri = registry["home"], registry["tracking_uri"]
    monkeypatch.setenv("LOOPLINE_HOME", home)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model", python_model=Broken(), registered_model_name="broken-first"
        )
    v1 = int(info.registered_model_version)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    move_champion(client, "broken-first", v1, expected=None, action="promote", reason="test")
    cfg = LifecycleConfig(home=home)
    cfg.serving.port = free_port()
    cfg.serving.confirm_timeout_seconds = 10
    try:
        with pytest.raises(ModelError, match="nothing to roll back to"):
            deployment_flow(cfg, model="broken-first")
    finally:
        deploy.stop_all_servers(home)
    assert int(client.get_model_version_by_alias("broken-first", "champion").version) == v1
