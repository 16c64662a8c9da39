"""Model factories. `training.model: "module:function"` names one; every factory has the signature
`factory(input_dim, output_dim, cfg: TrainingConfig) -> torch.nn.Module` and returns raw outputs
(logits for classification, standardised values for regression): the loss and the predictor add the link.
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


def mlp(input_dim: int, output_dim: int, cfg: TrainingConfig) -> torch.nn.Module:
    """The default tabular model: Linear -> ReLU (-> Dropout) per hidden layer, then a linear head."""
    from torch import nn

    layers: list[nn.Module] = []
    width = input_dim
    for hidden in cfg.hidden_sizes:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        if cfg.dropout > 0:
            layers.append(nn.Dropout(cfg.dropout))
        width = hidden
    layers.append(nn.Linear(width, output_dim))
    return nn.Sequential(*layers)


def linear(input_dim: int, output_dim: int, cfg: TrainingConfig) -> torch.nn.Module:
    """A linear model (logistic / softmax / linear regression): the baseline a real model must beat."""
    from torch import nn

    return nn.Linear(input_dim, output_dim)


def resolve_factory(spec: str) -> ModelFactory:
    """Import `module:function`. Raises ConfigError naming `training.model` when it does not resolve."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"training.model {spec!r}: expected 'module:function', e.g. 'loopline.models:mlp'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"training.model {spec!r}: cannot import {module_name!r}: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"training.model {spec!r}: {module_name} has no callable {attr!r}")
    return factory


def output_dim_for(task: str, n_classes: int | None) -> int:
    """One logit for binary, one per class for multiclass, one value for regression."""
    if task == "multiclass":
        if not n_classes or n_classes < 2:
            raise ConfigError(f"a multiclass task needs at least 2 classes, got {n_classes}")
        return n_classes
    return 1
