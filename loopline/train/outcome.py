"""The numbers one training attempt hands back, whether it ran in-process or under torchrun."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch


@dataclass
class TrainOutcome:
    steps: int
    resumed_from_step: int
    state_sha256: str
    samples_per_s: float
    seconds: float
    device: str
    precision: str
    data_placement: str
    input_dim: int
    output_dim: int
    target_mean: float
    target_std: float
    val_metrics: dict[str, float] = field(default_factory=dict)
    best_metric: float | None = None
    stopped_early: bool = False
    checkpoint_uri: str | None = None
    checkpoint_writes: int = 0
    checkpoint_seconds_last: float | None = None
    world_size: int = 1
    state_dict: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    @classmethod
    def from_loop(cls, result: TrainOutcome, world_size: int = 1) -> TrainOutcome:
        """The plain outcome of a loop's result (which also holds the module), for one of `world_size` ranks."""
        fields = {k: getattr(result, k) for k in cls.__dataclass_fields__}
        return cls(**{**fields, "world_size": world_size})

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("state_dict", None)
        return data
