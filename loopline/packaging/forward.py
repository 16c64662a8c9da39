"""A model's forward pass without nn.Module's per-call machinery, for the layer stacks the built-in factories
build (`loopline.train.models`): an nn.Sequential of Linear, ReLU, Dropout and Identity layers, or one Linear.

`Module.__call__` checks for hooks, and `Sequential` iterates its children through it, at a few microseconds
per layer: for a one-row request that is about half of the model's time. `plain_forward` calls the same
kernels the modules' own `forward` methods call (`F.linear`, `torch.relu`), in the same order, so its outputs
are the same bits. Any other module (a user factory's, a subclass that overrides `forward`, a hook on any
layer, or a hook on every module, when the predictor is built) gets None and is called as the module; so does a model in training mode
(Dropout would act).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def plain_forward(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """A function equal to `model(x)` in eval mode, or None when `model` is not a stack this module knows."""
    from torch import nn
    from torch.nn import functional as F

    layers = list(model) if type(model) is nn.Sequential else [model]
    steps: list[nn.Module | None] = []  # a Linear, or None for ReLU
    for layer in layers:
        if _hooked(layer):
            return None
        kind = type(layer)
        if kind is nn.Linear:
            steps.append(layer)
        elif kind is nn.ReLU:
            steps.append(None)
        elif kind not in (nn.Dropout, nn.Identity):  # both the identity in eval mode
            return None
    if _hooked(model) or _global_hooks():
        return None
    import torch

    linear, relu = F.linear, torch.relu

    def forward(x: torch.Tensor) -> torch.Tensor:
        if model.training:  # Dropout would act
            return model(x)
        for step in steps:
            # the weights are read at each call: a later .to(device) or load_state_dict is seen
            x = relu(x) if step is None else linear(x, step.weight, step.bias)
        return x

    return forward


def _hooked(module) -> bool:
    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or getattr(module, "_forward_hooks_with_kwargs", None)
        or getattr(module, "_backward_hooks", None)
    )


def _global_hooks() -> bool:
    """Hooks for every module (`torch.nn.modules.module.register_module_forward_hook`, a profiler's, say)."""
    from torch.nn.modules import module

    return bool(
        getattr(module, "_global_forward_hooks", None) or getattr(module, "_global_forward_pre_hooks", None)
    )
