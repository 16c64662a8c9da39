"""Model factories by name: `training.model` and a bundle's `factory` are "module:function" strings.

A factory has the signature `factory(input_dim, output_dim, cfg: TrainingConfig) -> torch.nn.Module` and
returns raw outputs. The bundle names its factory, so packaging imports the factory's module only when a
bundle is loaded: the built-in ones live in `loopline.train.models`, users' own anywhere importable.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from loopline.errors import ConfigError

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
