"""The MLflow pyfunc face of a bundle: raw contract columns in, predictions out.

A loopline model is logged with `loader_module="loopline.packaging.pyfunc"` and the bundle as its data
(`data/bundle` in the artifact: weights for `torch.load(weights_only=True)`, JSON and YAML, nothing else).
`mlflow.pyfunc.load_model("models:/M/1")` and `mlflow models serve` import THIS module from the installed
loopline and call `_load_pyfunc(data_path)`: no pickle is read and no code travels with the model, so writing
to the registry does not let anyone run code on the machines that load its models. (MLflow's
"models-from-code" copies a Python file into the artifact and executes it at load, i.e. still code from the
registry; `loopline.packaging.safe_load` refuses it like a pickle.)

`LooplineModel` is kept only so that a model logged before this format (a cloudpickled `LooplineModel`
whose artifacts hold the bundle) still loads where someone calls `mlflow.pyfunc.load_model` on it
themselves; loopline never unpickles it: `safe_load` loads such a model's bundle directly.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from loopline.packaging.registry import BUNDLE_ARTIFACT

LOADER_MODULE = __name__  # what the MLmodel names; safe_load accepts exactly this loader


class BundleModel:
    """What `_load_pyfunc` returns: wraps `loopline.packaging.bundle.Predictor`. Input: a DataFrame with the
    contract's feature columns (the id and the label may be present and are ignored). Output: binary
    P(positive), multiclass labels, regression values."""

    def __init__(self, predictor) -> None:
        self.predictor = predictor

    def predict(self, model_input, params: dict[str, Any] | None = None):
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        # a plain array: the scoring server answers {"predictions": [...]}, as for any sklearn model
        return np.asarray(self.predictor.predict(frame))


def _load_pyfunc(data_path: str, model_config: dict[str, Any] | None = None) -> BundleModel:
    """MLflow's loader-module hook: `data_path` is the model's `data/bundle` directory."""
    from loopline.packaging.bundle import load_predictor

    return BundleModel(load_predictor(data_path, device="cpu"))


class LooplineModel(mlflow.pyfunc.PythonModel):
    """The pickled class of models logged before the loader-module format (see the module docstring)."""

    def load_context(self, context) -> None:
        from loopline.packaging.bundle import load_predictor

        self.predictor = load_predictor(context.artifacts[BUNDLE_ARTIFACT], device="cpu")

    def predict(self, context, model_input, params: dict[str, Any] | None = None):
        return BundleModel(self.predictor).predict(model_input, params)
