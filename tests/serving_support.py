"""Shared helpers for the serving tests and bench/serving: real models, request bodies, server processes.

`build_registered_model` runs the real pipeline (synthetic source -> ingest -> features -> training ->
MLflow registry); `make_bundle` writes a real bundle (fitted transform, an untrained MLP) without MLflow for
fast in-process tests, and `register_bundles` puts such bundles in a real MLflow registry in seconds (for
tests that need a server process but not a trained model). `contract_variant` writes the demo contract
with columns dropped or added; `slow_mlp` is a model factory whose every call takes SLOW_MODEL_SECONDS (a
real model that serves a known, small rate). `AppHarness` runs the ASGI app in-process on real bundles.
"""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
DEMO_CONTRACT = REPO / "contracts" / "demo.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_rows(n: int, seed: int = 0, *, with_id: bool = True) -> pd.DataFrame:
    """n valid demo rows (feature columns, plus the id) as a frame of JSON-ready Python values."""
    from loopline.config import SyntheticConfig
    from loopline.data.contracts import load_contract
    from loopline.data.synthetic import generate_frame

    contract = load_contract(DEMO_CONTRACT)
    frame = generate_frame(SyntheticConfig(rows=n, seed=seed, id_offset=10_000_000 + seed * n))
    cols = ([contract.id] if with_id else []) + contract.feature_columns
    frame = frame[cols].copy()
    frame["signup_at"] = frame["signup_at"].dt.strftime("%Y-%m-%dT%H:%M:%S")
    return frame.astype(object).where(frame.notna(), None)


def payloads(frame: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """The same rows in MLflow's four input formats."""
    records = frame.to_dict("records")
    return {
        "dataframe_split": {
            "dataframe_split": {"columns": list(frame.columns), "data": frame.values.tolist()}
        },
        "dataframe_records": {"dataframe_records": records},
        "instances": {"instances": records},
        "inputs": {"inputs": {c: frame[c].tolist() for c in frame.columns}},
    }


def pyfunc_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows as the pyfunc takes them in Python (its signature types signup_at as datetime)."""
    out = frame.copy()
    out["signup_at"] = pd.to_datetime(out["signup_at"])
    for col in out.columns:
        if col.startswith("f") or col in ("age", "customer_id"):
            out[col] = pd.to_numeric(out[col])
    return out


SLOW_MODEL_SECONDS = 0.05  # each call of a `slow_mlp` model, whatever its batch size


def slow_mlp(input_dim: int, output_dim: int, cfg):
    """The built-in MLP, slowed to SLOW_MODEL_SECONDS per call: a bundle factory ("module:function")."""
    import torch

    from loopline.train.models import mlp

    class SlowModel(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = mlp(input_dim, output_dim, cfg)

        def forward(self, x):
            time.sleep(SLOW_MODEL_SECONDS)
            return self.inner(x)

    return SlowModel()


def contract_variant(
    directory: Path, name: str, *, drop: tuple[str, ...] = (), add: dict[str, dict] | None = None
) -> Path:
    """The demo contract with columns dropped and/or added, written to directory/name.yaml."""
    import yaml

    raw = yaml.safe_load(DEMO_CONTRACT.read_text())
    raw["columns"] = {c: spec for c, spec in raw["columns"].items() if c not in drop}
    raw["columns"].update(add or {})
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def make_bundle(
    directory: Path,
    seed: int = 0,
    contract_path: Path = DEMO_CONTRACT,
    factory: str = "loopline.train.models:mlp",
) -> Path:
    """A real bundle: transform fitted on synthetic rows, a model with seeded random weights. Columns the
    synthetic source lacks (a contract variant's additions) get random floats to fit on."""
    import torch

    from loopline.config import FeaturesConfig, SyntheticConfig, TrainingConfig
    from loopline.data.contracts import load_contract
    from loopline.data.synthetic import generate_frame
    from loopline.features import fit_transform
    from loopline.packaging.bundle import BundleMeta, write_bundle
    from loopline.packaging.factory import resolve_factory, trust_module_of

    trust_module_of(factory)  # as training does: this process and the servers it starts load such bundles

    contract = load_contract(contract_path)
    frame = generate_frame(SyntheticConfig(rows=500, seed=1))
    for column in contract.feature_columns:
        if column not in frame.columns:
            frame[column] = np.random.default_rng(seed).normal(size=len(frame))
    transform = fit_transform(frame, contract, FeaturesConfig())
    cfg = TrainingConfig(hidden_sizes=[32])
    torch.manual_seed(seed)
    model = resolve_factory(factory)(len(transform.feature_names), 1, cfg)
    meta = BundleMeta(
        factory=factory,
        input_dim=len(transform.feature_names),
        output_dim=1,
        task="binary",
        classes=[0, 1],
        model_config=cfg.model_dump(mode="json"),
        feature_names=transform.feature_names,
        data_versions={},
        contract_hash=contract.hash,
    )
    return write_bundle(directory, model.state_dict(), meta, transform, contract)


def build_registered_model(
    home: Path, *, versions: int = 1, rows: int = 3000, max_steps: int = 20
) -> dict[str, Any]:
    """The real pipeline into `home`: synthetic source -> ingest -> features -> train `versions` times
    (different seeds: different versions). Version 1 gets @champion. Returns tracking_uri, model, versions."""
    from loopline.config import LifecycleConfig, SyntheticConfig
    from loopline.data.contracts import load_contract
    from loopline.data.ingest import ingest_source
    from loopline.data.synthetic import generate_source
    from loopline.features import build_features
    from loopline.storage.lake import Lake

    home.mkdir(parents=True, exist_ok=True)
    tracking_uri = f"sqlite:///{home / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    lake = Lake(root=str(home / "lake"))
    contract = load_contract(DEMO_CONTRACT)
    cfg = LifecycleConfig(home=str(home), data={"contract": str(DEMO_CONTRACT)})
    source = generate_source(SyntheticConfig(rows=rows, seed=3), home / "landing")
    ingest_source(str(source), contract, lake, cfg)
    build_features(lake, contract, cfg.features)
    from loopline.train import run_training

    found = []
    for i in range(versions):
        tcfg = cfg.model_copy(
            update={
                "training": cfg.training.model_copy(
                    update={"max_steps": max_steps, "seed": i, "hidden_sizes": [32]}
                )
            }
        )
        result = run_training(tcfg, contract.dataset, lake=lake, tracking_uri=tracking_uri)
        found.append(str(result["model_version"]))
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri).set_registered_model_alias(
        contract.dataset, "champion", found[0]
    )
    return {
        "tracking_uri": tracking_uri,
        "model": contract.dataset,
        "versions": found,
        "home": str(home),
        "lake": lake,
    }


def register_bundles(
    home: Path, bundles: list[Path], model: str = "demo", tracking_uri: str | None = None
) -> dict[str, Any]:
    """Register each bundle as a new version of `model` in a real MLflow registry: under `home` (sqlite,
    artifacts under home), or at `tracking_uri`; version 1 gets @champion. Returns tracking_uri, model,
    versions, home."""
    import mlflow
    from mlflow import MlflowClient

    from loopline.packaging.bundle import load_predictor
    from loopline.packaging.registry import ensure_experiment, log_and_register_bundle

    home.mkdir(parents=True, exist_ok=True)
    tracking_uri = tracking_uri or f"sqlite:///{home / 'mlflow.db'}"
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)  # log_model registers through the global one: not another test's
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    experiment = ensure_experiment(client, f"loopline-{model}", str(home), tracking_uri)
    versions = []
    for bundle in bundles:
        predictor = load_predictor(bundle)
        example = pyfunc_frame(demo_rows(3, seed=7))
        for column in predictor.feature_columns:  # a variant's added columns
            if column not in example.columns:
                example[column] = 0.5
        example = example[predictor.feature_columns]
        with mlflow.start_run(experiment_id=experiment):
            info = log_and_register_bundle(
                str(bundle),
                model_name=model,
                contract=predictor.contract,
                input_example=example,
                predictions=predictor.predict(example),
            )
        versions.append(info["model_version"])
    client.set_registered_model_alias(model, "champion", versions[0])
    return {"tracking_uri": tracking_uri, "model": model, "versions": versions, "home": str(home)}


class AppHarness:
    """The ASGI app (`build_app`) on a private event loop with real bundles, driven through httpx's ASGI
    transport: version "1" is installed as champion, and "2" as challenger when `challenger`."""

    def __init__(self, bundles: dict[str, Path], tmp: Path, cfg, *, challenger: bool = False, token=None):
        import asyncio

        import httpx

        from loopline.serving.model import load_bundle_model
        from loopline.serving.router import CHALLENGER, CHAMPION
        from loopline.serving.server import build_app
        from loopline.storage.lake import Lake

        self.loop = asyncio.new_event_loop()
        self.lake = Lake(root=str(tmp / "lake"))
        self.app = build_app("demo", cfg, source=None, home=str(tmp), lake=self.lake, reload_token=token)
        self.models = {
            v: load_bundle_model(d, name="demo", version=v, alias="x", device="cpu")
            for v, d in bundles.items()
        }
        self.run(self.app.manager.install(self.models["1"], CHAMPION))
        if challenger:
            self.run(self.app.manager.install(self.models["2"], CHALLENGER))
        self.run(self.app.startup())
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://test")

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def post(self, body: bytes | dict, headers: dict | None = None):
        import orjson

        content = body if isinstance(body, bytes) else orjson.dumps(body)
        return self.run(
            self.client.post(
                "/invocations",
                content=content,
                headers={"content-type": "application/json", **(headers or {})},
            )
        )

    def get(self, path: str):
        return self.run(self.client.get(path))

    def close(self) -> None:
        self.run(self.client.aclose())
        self.run(self.app.shutdown())
        self.loop.close()


class ServerProcess:
    """`python -m loopline.serving` in a subprocess on a free port; stop() sends SIGTERM (graceful)."""

    def __init__(
        self, model: str, home: str, tracking_uri: str, *args: str, env: dict[str, str] | None = None
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(home) / f"serve-{self.port}.log"
        cmd = [
            sys.executable,
            "-m",
            "loopline.serving",
            "--model",
            model,
            "--port",
            str(self.port),
            "--home",
            home,
        ]
        cmd += ["--tracking-uri", tracking_uri, *args]
        self.proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env={**os.environ, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=open(self.log_path, "wb"),
        )

    def wait_ready(self, timeout: float = 90.0) -> ServerProcess:
        import httpx

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.proc.returncode}: {self.log_path.read_text()[-3000:]}"
                )
            try:
                if httpx.get(f"{self.url}/ping", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.kill()
        raise TimeoutError(f"server did not come up: {self.log_path.read_text()[-3000:]}")

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def mlflow_serve(model_uri: str, tracking_uri: str, home: str) -> tuple[subprocess.Popen, str]:
    """`mlflow models serve --env-manager local` on a free port (not yet ready: wait on /ping)."""
    port = free_port()
    # it starts `uvicorn` through bash: the venv's bin must be on PATH
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "models",
            "serve",
            "-m",
            model_uri,
            "-p",
            str(port),
            "-h",
            "127.0.0.1",
            "--env-manager",
            "local",
        ],
        cwd=home,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(Path(home) / f"mlflow-serve-{port}.log", "wb"),
    )
    return proc, f"http://127.0.0.1:{port}"


def wait_http(url: str, timeout: float = 180.0, proc: subprocess.Popen | None = None) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer in {timeout}s")


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def close(a: Any, b: Any, tol: float = 1e-6) -> bool:
    return np.allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), rtol=0, atol=tol)


@functools.cache
def shared_registry() -> dict[str, Any]:
    """One real MLflow registry per test process (built on first use, removed at exit) holding two
    one-version models of untrained bundles: `demo` (the built-in MLP) and `slowdemo` (`slow_mlp`). Modules
    that each start their own server share it, so the registry's start-up cost is paid once."""
    import atexit
    import shutil
    import tempfile

    home = Path(tempfile.mkdtemp(prefix="loopline-shared-registry-"))
    atexit.register(shutil.rmtree, home, True)
    fast = register_bundles(home, [make_bundle(home / "bundles" / "demo")], model="demo")
    slow = make_bundle(home / "bundles" / "slowdemo", factory="tests.serving_support:slow_mlp")
    register_bundles(home, [slow], model="slowdemo")
    return {"home": str(home), "tracking_uri": fast["tracking_uri"], "models": ["demo", "slowdemo"]}
