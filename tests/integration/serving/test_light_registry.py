"""A model server reads the registry without MLflow (loopline.serving.light_registry) where it can: a real
`mlflow server` (REST, artifacts behind its proxy and in a local directory) gives the same versions, tags and
bundle files as MLflow's client, and what the light reader cannot serve goes through MLflow's client."""

from __future__ import annotations

import filecmp
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import free_port, wait_http
from tests.serving_support import make_bundle, register_bundles

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def rest(tmp_path_factory):
    """An MLflow tracking server serving artifacts (mlflow-artifacts:/), with models registered through it:
    `proxied` under the server's default artifact root, `local` in an experiment whose root is a directory."""
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("mlflow-rest")
    port = free_port()
    cmd = [sys.executable, "-m", "flows.stack.launch", "mlflow", "server"]  # as `loopline up` starts it
    cmd += [
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "store"),
    ]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(root / "server.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", timeout=120)
        client = MlflowClient(url, registry_uri=url)
        client.create_experiment("loopline-local", artifact_location=(root / "local-root").as_uri())
        bundles = [make_bundle(root / "b" / f"v{i}", seed=i) for i in (1, 2)]
        proxied = register_bundles(root / "h1", bundles, model="proxied", tracking_uri=url)
        register_bundles(root / "h2", bundles[:1], model="local", tracking_uri=url)
        rollout = json.dumps({"mode": "canary", "weight": 0.25, "step": 0})
        client.set_model_version_tag("proxied", proxied["versions"][1], "loopline.rollout", rollout)
        client.set_registered_model_alias("proxied", "challenger", proxied["versions"][1])
        yield {"url": url, "root": root, "client": client}
    finally:
        proc.terminate()
        proc.wait(30)


def test_the_rest_registry_answers_as_mlflows_client_without_importing_mlflow(rest, tmp_path):
    """In a fresh process: aliases, the rollout tag, a missing alias and model, both artifact roots; the
    downloaded bundles equal MLflow's copies file by file, and MLflow was never imported."""
    code = """
import json, sys
from loopline.serving.registry_source import RegistrySource
s = RegistrySource(sys.argv[1], sys.argv[2])
out = {
    "reader": type(s.light).__name__,
    "champion": s.resolve("proxied", "champion"),
    "rollout": s.resolve_rollout("proxied"),
    "no_alias": s.resolve("proxied", "nope"),
    "no_model": s.resolve("nobody", "champion"),
    "proxied": str(s.download("proxied", "1")),
    "challenger": str(s.download("proxied", "2")),
    "local": str(s.download("local", "1")),
    "mlflow_imported": "mlflow" in sys.modules,
}
print(json.dumps(out))
"""
    done = subprocess.run(
        [sys.executable, "-c", code, rest["url"], str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["reader"] == "RestRegistry" and out["mlflow_imported"] is False
    assert out["champion"] == "1" and out["no_alias"] is None and out["no_model"] is None
    assert out["rollout"] == ["2", {"mode": "canary", "weight": 0.25, "step": 0}]
    client = rest["client"]
    assert client.get_model_version_download_uri("proxied", "1").startswith("mlflow-artifacts:/")
    assert client.get_model_version_download_uri("local", "1").startswith("file:")
    from mlflow.artifacts import download_artifacts

    for model, version, key in (
        ("proxied", "1", "proxied"),
        ("proxied", "2", "challenger"),
        ("local", "1", "local"),
    ):
        uri = client.get_model_version_download_uri(model, version)
        theirs = download_artifacts(
            f"{uri}/data/bundle", dst_path=str(tmp_path / f"mlflow-{key}"), tracking_uri=rest["url"]
        )
        compared = filecmp.dircmp(out[key], theirs)
        assert sorted(compared.common_files) == sorted(p.name for p in Path(theirs).iterdir())
        assert not compared.diff_files and not compared.left_only and not compared.right_only


def test_what_the_light_reader_cannot_serve_goes_through_mlflows_client(rest, tmp_path, monkeypatch):
    from loopline.serving.light_registry import RestRegistry, Unsupported, light_registry
    from loopline.serving.registry_source import RegistrySource

    # settings only MLflow's client implements, and stores it does not know: MLflow's client from the start
    monkeypatch.setenv("MLFLOW_TRACKING_INSECURE_TLS", "true")
    assert light_registry(rest["url"]) is None
    monkeypatch.delenv("MLFLOW_TRACKING_INSECURE_TLS")
    assert light_registry("databricks") is None and light_registry("file:///tmp/mlruns") is None
    assert isinstance(light_registry(rest["url"]), RestRegistry)
    # an artifact root the light reader cannot read (here: another scheme): MLflow's client takes over
    source = RegistrySource(rest["url"], tmp_path / "cache")
    with pytest.raises(Unsupported):
        source.light.read("s3://bucket/MLmodel")
    real = source.light.download_uri

    def elsewhere(name, version):
        real(name, version)
        raise Unsupported("s3://bucket/model: artifacts behind s3")

    monkeypatch.setattr(source.light, "download_uri", elsewhere)
    bundle = source.download("proxied", "1")
    assert source.light is None and (bundle / "bundle.json").is_file()
    assert source.resolve("proxied", "champion") == "1"  # through MLflow's client now


def test_the_server_says_where_it_listens_and_a_missing_model_once(rest, tmp_path):
    """`python -m loopline.serving` (what `loopline serve` runs): one line on stderr once it listens, naming
    the model, version and address; a model without @champion: one error line, exit 2 (uvicorn's own exit 3
    and its two log lines are not shown)."""
    port = free_port()
    cmd = [sys.executable, "-m", "loopline.serving", "--tracking-uri", rest["url"], "--home", str(tmp_path)]
    cmd += ["--no-inference-log", "--poll-seconds", "0"]
    with open(tmp_path / "err.log", "wb") as err:
        proc = subprocess.Popen([*cmd, "--model", "proxied", "--port", str(port)], stderr=err)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=120)
        time.sleep(0.5)
        said = (tmp_path / "err.log").read_text()
        assert f"serving models:/proxied@champion v1 at http://127.0.0.1:{port}" in said, said
    finally:
        proc.terminate()
        proc.wait(30)
    missing = subprocess.run(
        [*cmd, "--model", "nobody", "--port", str(free_port())], capture_output=True, text=True, timeout=120
    )
    assert missing.returncode == 2, missing.stderr
    lines = [line for line in missing.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "'nobody'" in lines[0], lines
