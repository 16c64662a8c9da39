"""Run identity, light imports and the model factories."""

from __future__ import annotations

import subprocess
import sys

import pytest

from loopline.config import TrainingConfig
from loopline.errors import ConfigError
from loopline.packaging.factory import resolve_factory
from loopline.train import code_version, compute_run_key
from loopline.train.models import output_dim_for


def key(cfg: TrainingConfig, **kw) -> str:
    args = {"dataset": "demo", "model_name": "demo", "features_version": 3, "code": "abc"} | kw
    return compute_run_key(cfg, **args)


def test_run_key_changes_with_what_changes_the_numbers():
    base = key(TrainingConfig())
    assert base == key(TrainingConfig())
    assert base != key(TrainingConfig(lr=0.01))
    assert base != key(TrainingConfig(), features_version=4)
    assert base != key(TrainingConfig(), code="def")
    assert base != key(TrainingConfig(), model_name="other")
    # where it runs is not in the key: another world size finds the run's checkpoints and is refused
    # (loopline.train.topology.WorldSizeChanged) instead of silently starting over
    assert base == key(TrainingConfig(devices=2, nodes=4, node_rank=1, rdzv_endpoint="n0:29400"))


def test_run_key_ignores_operational_settings():
    ops = TrainingConfig(
        checkpoint_every_steps=7,
        checkpoint_every_seconds=1.0,
        keep_last_checkpoints=9,
        log_every_steps=3,
        spot_notice_file="/tmp/notice",
        gpu_price_per_hour=4.0,
    )
    assert key(ops) == key(TrainingConfig())


def test_code_version_is_pinnable_and_stable(monkeypatch):
    monkeypatch.delenv("LOOPLINE_CODE_VERSION", raising=False)
    first = code_version()
    assert first and first == code_version()
    monkeypatch.setenv("LOOPLINE_CODE_VERSION", "image-1.2.3")
    assert code_version() == "image-1.2.3"


def test_importing_bundle_and_train_stays_light():
    code = (
        "import sys, loopline.bundle, loopline.train, loopline.gpu, loopline.models;"
        "heavy = [m for m in ('mlflow', 'prefect', 'torch') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ""


def test_factories_resolve_and_name_the_key_when_they_do_not():
    model = resolve_factory("loopline.train.models:mlp")(
        5, 3, TrainingConfig(hidden_sizes=[8, 4], dropout=0.2)
    )
    assert sum(p.numel() for p in model.parameters()) == (5 * 8 + 8) + (8 * 4 + 4) + (4 * 3 + 3)
    assert resolve_factory("loopline.train.models:linear")(5, 1, TrainingConfig()).weight.shape == (1, 5)
    for bad in ("loopline.train.models", "no_such_module:f", "loopline.train.models:nope"):
        with pytest.raises(ConfigError, match="training.model"):
            resolve_factory(bad)
    assert (
        output_dim_for("binary", 2) == 1
        and output_dim_for("multiclass", 4) == 4
        and output_dim_for("regression", None) == 1
    )
    with pytest.raises(ConfigError):
        output_dim_for("multiclass", 1)


def test_a_bundle_factory_from_an_untrusted_module_is_refused_before_it_is_called(monkeypatch, tmp_path):
    """A registry writer chooses the bundle's factory string: "builtins:exec" with code for input_dim would
    run on every server. Only trusted modules are called, with positive integer dimensions."""
    from loopline.errors import ModelError
    from loopline.packaging.factory import TRUSTED_MODULES_ENV, resolve_bundle_factory, trust_module_of

    monkeypatch.delenv(TRUSTED_MODULES_ENV, raising=False)
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'w').write('x')"
    with pytest.raises(ModelError, match="not from a trusted module"):
        resolve_bundle_factory("builtins:exec", code, {}, "bundle b")(code, {}, None)
    assert not marker.exists()
    with pytest.raises(ModelError, match="positive integer"):
        resolve_bundle_factory("loopline.train.models:mlp", "5", 1, "bundle b")
    assert resolve_bundle_factory("loopline.train.models:linear", 5, 1, "bundle b") is not None
    trust_module_of("tests.serving_support:slow_mlp")  # training trusts the module its config names
    assert resolve_bundle_factory("tests.serving_support:slow_mlp", 5, 1, "bundle b") is not None
