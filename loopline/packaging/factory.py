"""Model factories by name: `training.model` and a bundle's `factory` are "module:function" strings.

A factory has the signature `factory(input_dim, output_dim, cfg: TrainingConfig) -> torch.nn.Module` and
returns raw outputs. The bundle names its factory, so packaging imports the factory's module only when a
bundle is loaded: the built-in ones live in `loopline.train.models`, users' own anywhere importable.

A bundle comes from the registry, and whoever can write there chooses its `factory` string: loading calls it.
So a bundle's factory must come from a trusted module (`resolve_bundle_factory`): the built-in one, or one
named in `LOOPLINE_MODEL_MODULES` (comma-separated module names; set it where models with your own factory
are trained, evaluated and served; training sets it in its own process for the module `training.model`
names). Without that, "builtins:exec" in a bundle.json would run code on every server and worker.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from loopline.errors import ConfigError, ModelError

if TYPE_CHECKING:
    import torch

    from loopline.config import TrainingConfig

ModelFactory = Callable[[int, int, "TrainingConfig"], "torch.nn.Module"]


def resolve_factory(spec: str) -> ModelFactory:
    """Import `module:function`. Raises ConfigError naming `training.model` when it does not resolve."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(
            f"training.model {spec!r}: expected 'module:function', e.g. 'loopline.train.models:mlp'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"training.model {spec!r}: cannot import {module_name!r}: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"training.model {spec!r}: {module_name} has no callable {attr!r}")
    return factory


BUILTIN_MODULES = ("loopline.train.models", "loopline.models")  # the second: its pre-regroup name
TRUSTED_MODULES_ENV = "LOOPLINE_MODEL_MODULES"


def trusted_modules() -> set[str]:
    extra = os.environ.get(TRUSTED_MODULES_ENV, "")
    return set(BUILTIN_MODULES) | {m.strip() for m in extra.split(",") if m.strip()}


def trust_module_of(spec: str) -> None:
    """Trust `training.model`'s module in this process (and the processes it starts): the user named it."""
    module_name = spec.partition(":")[0]
    if module_name and module_name not in trusted_modules():
        current = os.environ.get(TRUSTED_MODULES_ENV, "")
        os.environ[TRUSTED_MODULES_ENV] = ",".join(m for m in (current, module_name) if m)


def resolve_bundle_factory(spec: str, input_dim: object, output_dim: object, where: str) -> ModelFactory:
    """A bundle's factory, refused (ModelError naming `where`) unless its module is trusted and its dimensions
    are positive integers (the only arguments a bundle passes besides the validated TrainingConfig)."""
    module_name = spec.partition(":")[0]
    if module_name not in trusted_modules():
        raise ModelError(
            f"{where}: the bundle's factory {spec!r} is not from a trusted module (trusted: "
            f"{', '.join(sorted(trusted_modules()))}); a factory of your own needs its module in "
            f"{TRUSTED_MODULES_ENV}"
        )
    for name, value in (("input_dim", input_dim), ("output_dim", output_dim)):
        if type(value) is not int or value <= 0:
            raise ModelError(f"{where}: the bundle's {name} must be a positive integer, not {value!r}")
    return resolve_factory(spec)
