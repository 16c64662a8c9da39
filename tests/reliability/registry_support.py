"""A small real model registry for the reliability tests of promotion and model loading.

One tiny binary dataset written straight into a real Delta lake (clean -> features, the real builder), one
model trained on it by the real training run and registered by loopline in a real MLflow (SQLite) under a
temporary home. Built once per session (a few seconds) and shared: each test copies the versions it needs
into a registered model of its own, so aliases and history never leak between tests.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

_built: dict[str, Any] = {}
_names = itertools.count()
DATASET = "tiny_registry"
# lateral moves allowed (a copy of the champion may replace it), a small bootstrap: the tests are about
# loading and the alias moves, not about the statistics
EVALUATION = {"bootstrap_samples": 50, "min_slice_rows": 10, "min_improvement": -0.001}


def trained_registry(tmp_path_factory) -> dict[str, Any]:
    """{home, cfg, lake, tracking, client, contract}: the registered model `base` has version 1."""
    if _built:
        return _built
    import torch
    from mlflow import MlflowClient

    from loopline.config import LifecycleConfig
    from loopline.storage.lake import Lake
    from loopline.train import run_training
    from loopline.train.sample_data import build_sample_features, tiny_contract, tiny_frame

    home = tmp_path_factory.mktemp("registry-home")
    tracking = f"sqlite:///{home / 'mlflow.db'}"
    lake = Lake(root=str(home / "lake"))
    contract = tiny_contract("binary", dataset=DATASET)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOOPLINE_HOME", str(home))
        mp.delenv("LOOPLINE_LAKE_URI", raising=False)
        mp.setenv("MLFLOW_TRACKING_URI", tracking)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        build_sample_features(lake, contract, tiny_frame(contract, 1200))
        cfg = LifecycleConfig(home=str(home), evaluation=EVALUATION)
        cfg.training.max_steps, cfg.training.hidden_sizes, cfg.training.batch_size = 40, [16], 128
        cfg.training.eval_every_steps = 1000
        run_training(cfg, DATASET, lake=lake, tracking_uri=tracking, model_name="base")
        torch.set_num_threads(threads)
    _built.update(
        home=home,
        cfg=cfg,
        lake=lake,
        tracking=tracking,
        client=MlflowClient(tracking_uri=tracking, registry_uri=tracking),
        contract=contract,
    )
    return _built


def clone(reg: dict[str, Any], copies: int = 1, prefix: str = "m") -> str:
    """A fresh registered model whose versions 1..copies are all copies of `base` version 1."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    client = reg["client"]
    name = f"{prefix}{next(_names)}"
    client.create_registered_model(name)
    mv = client.get_model_version("base", "1")
    # MLflow's registry resolves a `models:/m-...` source through the process-wide tracking URI, which an
    # earlier test module may have pointed at its own store (mlflow.set_tracking_uri): use this registry's
    with _use_tracking_uri(reg["tracking"]):
        for _ in range(copies):
            client.create_model_version(name, source=mv.source, run_id=mv.run_id)
    return name


def training_tags(reg: dict[str, Any]) -> dict[str, str]:
    """The tags of `base` v1's training run that say which data it was trained on (so a version registered
    with them is evaluated on the same held-out split)."""
    client = reg["client"]
    run = client.get_run(client.get_model_version("base", "1").run_id)
    return {
        k: v for k, v in run.data.tags.items() if k.startswith(("data.", "loopline.dataset", "contract."))
    }


def register_directory(reg: dict[str, Any], name: str, model_dir: Path, tags: dict[str, str]) -> int:
    """Register a model directory as it lies on disk (any MLmodel, any files), the way anyone with write
    access to the registry can. Returns the new version."""
    client = reg["client"]
    try:
        client.create_registered_model(name)
    except Exception:  # already registered
        pass
    experiment = client.get_experiment_by_name("loopline-base").experiment_id
    run = client.create_run(experiment, tags=tags)
    client.log_artifacts(run.info.run_id, str(model_dir), "model")
    client.set_terminated(run.info.run_id)
    mv = client.create_model_version(name, f"runs:/{run.info.run_id}/model", run.info.run_id)
    return int(mv.version)


def promote(reg: dict[str, Any], name: str, version: int, **kw) -> dict[str, Any]:
    from loopline.release import promote as core_promote

    return core_promote(reg["cfg"], name, version, lake=reg["lake"], tracking_uri=reg["tracking"], **kw)
