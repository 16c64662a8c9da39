"""A model version loaded for serving: the bundle's predictor, its input checker and compiled transform.

Scoring runs on torch tensors: checked columns -> compiled feature transform (numpy, no pandas) ->
`Predictor.predict_features` on the predictor's device (a GPU when present) -> `outputs_to_predictions`.
The result equals the registered pyfunc's `predict` on the same rows (a test holds both to it).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from loopline.serving.inputs import InputChecker, TypedRows, to_frame
from loopline.serving.transform import compile_transform


@dataclass
class LoadedModel:
    name: str
    version: str
    alias: str
    predictor: Any  # loopline.packaging.bundle.Predictor
    checker: InputChecker
    features: Callable[[TypedRows], np.ndarray]
    bundle_dir: str
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    compiled: bool = True  # False: the pandas transform (a step kind the compiled path does not know)
    warm_seconds: float | None = None  # the one-row warm-up call: the batcher's first estimate of a call

    @property
    def contract(self):
        return self.predictor.contract

    def score(self, rows: TypedRows) -> np.ndarray:
        """Predictions for checked rows: binary P(positive), multiclass labels, regression values."""
        import torch

        outputs = self.predictor.predict_features(torch.from_numpy(self.features(rows)))
        return self.predictor.outputs_to_predictions(outputs)

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "version": self.version,
            "alias": self.alias,
            "loaded_at": self.loaded_at.isoformat(),
            "device": str(self.predictor.device),
            "task": self.predictor.task,
        }


def pick_device(device: str) -> str:
    """'auto': the first CUDA GPU when torch sees one, else the CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_bundle_model(
    bundle_dir: str | os.PathLike, *, name: str, version: str, alias: str, device: str = "auto"
) -> LoadedModel:
    """Load a bundle directory for serving and warm it up with one row (first-call costs stay off requests)."""
    from loopline.packaging.bundle import load_predictor

    predictor = load_predictor(bundle_dir, device=pick_device(device))
    checker = InputChecker(predictor.contract)
    compiled = compile_transform(predictor.transform)
    if compiled is not None:
        features = compiled
    else:
        columns = predictor.feature_columns

        def features(rows: TypedRows) -> np.ndarray:
            return predictor.transform.transform(to_frame(rows)[columns])

    model = LoadedModel(
        name=name,
        version=str(version),
        alias=alias,
        predictor=predictor,
        checker=checker,
        features=features,
        bundle_dir=str(bundle_dir),
        compiled=compiled is not None,
    )
    started = time.perf_counter()
    model.score(TypedRows({c: _warm_column(checker, c) for c in checker.kept}, 1))
    model.warm_seconds = time.perf_counter() - started
    return model


def _warm_column(checker: InputChecker, name: str):
    from loopline.serving.inputs import _null_column

    return _null_column(checker.contract.columns[name], 1)
