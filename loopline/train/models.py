"""The built-in model factories. `training.model: "module:function"` names one (resolved by
`loopline.packaging.factory`); every factory has the signature
`factory(input_dim, output_dim, cfg: TrainingConfig) -> torch.nn.Module` and returns raw outputs
(logits for classification, standardised values for regression): the loss and the predictor add the link.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from loopline.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from loopline.config import TrainingConfig


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


def output_dim_for(task: str, n_classes: int | None) -> int:
    """One logit for binary, one per class for multiclass, one value for regression."""
    if task == "multiclass":
        if not n_classes or n_classes < 2:
            raise ConfigError(f"a multiclass task needs at least 2 classes, got {n_classes}")
        return n_classes
    return 1
