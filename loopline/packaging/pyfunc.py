"""The MLflow pyfunc face of a bundle: raw contract columns in, predictions out.

`mlflow.pyfunc.load_model("models:/M/1").predict(df)` and `mlflow models serve` work on it unchanged: the
model applies the versioned feature transform itself. The bundle directory is the pyfunc artifact
"bundle"; the loopline sources travel with the model (`code_paths`), so an environment built from the
logged pip requirements alone can load it.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from loopline.packaging.registry import BUNDLE_ARTIFACT


class LooplineModel(mlflow.pyfunc.PythonModel):
    """Wraps `loopline.packaging.bundle.Predictor`. Input: a DataFrame with the contract's feature columns (the id
    and the label may be present and are ignored). Output: binary P(positive), multiclass labels,
    regression values."""

    def load_context(self, context) -> None:
        from loopline.packaging.bundle import load_predictor

        self.predictor = load_predictor(context.artifacts[BUNDLE_ARTIFACT], device="cpu")

    def predict(self, context, model_input, params: dict[str, Any] | None = None):
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        # a plain array: the scoring server answers {"predictions": [...]}, as for any sklearn model
        return np.asarray(self.predictor.predict(frame))
