"""The model bundle: everything needed to score raw contract rows, in one directory.

    model.pt        the state dict (tensors only: `torch.load(weights_only=True)`)
    bundle.json     factory, input/output dims, task, classes, the training config the factory reads,
                    feature names, data versions, contract hash, target scale, run key, state_sha256
    transform.json  the fitted feature transform (loopline.features.FeatureTransform.to_dict())
    contract.yaml   the dataset contract

`load_predictor(dir)` rebuilds the model from its factory and returns a `Predictor` that takes a
DataFrame of raw contract columns. Evaluation, serving and drift use it; the MLflow pyfunc wraps it.
This module imports neither mlflow nor prefect (the serving process does not pay for them).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import yaml

from loopline.data.contracts import Contract, parse_contract, safe_yaml
from loopline.packaging.forward import plain_forward

if TYPE_CHECKING:
    import torch

    from loopline.features import FeatureTransform

BUNDLE_FORMAT = 1
FILES = ("model.pt", "bundle.json", "transform.json", "contract.yaml")


@dataclass
class BundleMeta:
    factory: str
    input_dim: int
    output_dim: int
    task: str
    classes: list[Any] | None
    model_config: dict[str, Any]  # the TrainingConfig the factory was called with
    feature_names: list[str]
    data_versions: dict[str, Any]  # features_version, transform_version, clean_version
    contract_hash: str
    target_mean: float = 0.0
    target_std: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)  # run_key, state_sha256, code_version, ...
    format: int = BUNDLE_FORMAT

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BundleMeta:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def write_bundle(
    directory: str | os.PathLike,
    state_dict: dict[str, torch.Tensor],
    meta: BundleMeta,
    transform: FeatureTransform,
    contract: Contract,
) -> Path:
    """Write the four bundle files into `directory` (created if needed)."""
    import torch

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, out / "model.pt")
    (out / "bundle.json").write_text(json.dumps(meta.to_dict(), indent=2, sort_keys=True, default=str))
    (out / "transform.json").write_text(json.dumps(transform.to_dict(), sort_keys=True, default=str))
    (out / "contract.yaml").write_text(yaml.safe_dump(contract.raw, sort_keys=False))
    return out


class Predictor:
    """Scores raw contract rows with a trained bundle. Thread-safe for concurrent `predict` calls."""

    def __init__(
        self,
        model: torch.nn.Module,
        meta: BundleMeta,
        transform: FeatureTransform,
        contract: Contract,
        device: str,
    ):
        self.model = model
        # the same kernels as model(x) without nn.Module's per-call work (packaging/forward.py)
        self._forward = plain_forward(model) or model
        self.meta = meta
        self.transform = transform
        self.contract = contract
        self.device = device

    @property
    def task(self) -> str:
        return self.meta.task

    @property
    def classes(self) -> list[Any] | None:
        return self.meta.classes

    @property
    def feature_columns(self) -> list[str]:
        """The raw columns the model reads (the contract's columns but the id and the label)."""
        return self.contract.feature_columns

    def features(self, df: pd.DataFrame) -> np.ndarray:
        """Raw contract columns -> the float32 matrix the model was trained on. Extra columns are ignored."""
        missing = [c for c in self.feature_columns if c not in df.columns]
        if missing:
            from loopline.errors import ContractError

            raise ContractError(f"input is missing contract column(s) {missing}", file=self.contract.path)
        return self.transform.transform(df[self.feature_columns])

    def predict_features(self, X: torch.Tensor) -> torch.Tensor:
        """Transformed features -> outputs with their link applied: binary P(positive) [n], multiclass
        probabilities [n, k], regression values [n]. For servers that batch tensors themselves."""
        import torch

        with torch.inference_mode():
            out = self._forward(X.to(self.device, dtype=torch.float32)).float()
            if self.task == "binary":
                return torch.sigmoid(out.squeeze(-1))
            if self.task == "multiclass":
                return torch.softmax(out, dim=-1)
            return out.squeeze(-1) * self.meta.target_std + self.meta.target_mean

    def outputs_to_predictions(self, outputs: torch.Tensor) -> np.ndarray:
        """`predict_features` outputs -> what `predict` returns (labels for multiclass)."""
        values = outputs.cpu().numpy()
        if self.task == "multiclass":
            classes = np.asarray(
                self.classes if self.classes is not None else range(values.shape[1]), dtype=object
            )
            return _tidy(classes[values.argmax(axis=1)])
        return values.astype(np.float64)

    def predict(self, df: pd.DataFrame) -> np.ndarray:
        """binary: probability of the positive class; multiclass: class labels; regression: values."""
        return self.outputs_to_predictions(self.predict_features(self._tensor(df)))

    def predict_proba(self, df: pd.DataFrame) -> np.ndarray:
        """Class probabilities [n, k] in the order of `classes` (binary: [P(negative), P(positive)])."""
        if self.task == "regression":
            raise TypeError("predict_proba applies to classification models only")
        probs = self.predict_features(self._tensor(df)).cpu().numpy().astype(np.float64)
        if self.task == "binary":
            return np.column_stack([1.0 - probs, probs])
        return probs

    def _tensor(self, df: pd.DataFrame) -> torch.Tensor:
        import torch

        return torch.from_numpy(self.features(df))


def _tidy(values: np.ndarray) -> np.ndarray:
    """Object arrays of ints/strings back to a plain dtype when they are homogeneous."""
    try:
        return np.asarray(values.tolist())
    except (TypeError, ValueError):
        return values


def read_bundle_meta(directory: str | os.PathLike) -> BundleMeta:
    return BundleMeta.from_dict(json.loads((Path(directory) / "bundle.json").read_text()))


def load_predictor(directory: str | os.PathLike, device: str = "cpu") -> Predictor:
    """Rebuild the model from its factory and weights; the architecture comes from the bundle."""
    import torch

    from loopline.config import TrainingConfig
    from loopline.features import FeatureTransform
    from loopline.packaging.factory import resolve_bundle_factory

    path = Path(directory)
    meta = read_bundle_meta(path)
    transform = FeatureTransform.from_dict(json.loads((path / "transform.json").read_text()))
    contract = parse_contract(
        safe_yaml((path / "contract.yaml").read_text()),
        file=str(path / "contract.yaml"),
    )
    cfg = TrainingConfig.model_validate(meta.model_config)
    factory = resolve_bundle_factory(meta.factory, meta.input_dim, meta.output_dim, f"bundle {path}")
    model = factory(meta.input_dim, meta.output_dim, cfg)
    model.load_state_dict(torch.load(path / "model.pt", map_location="cpu", weights_only=True))
    model.to(device).eval()
    return Predictor(model, meta, transform, contract, device)
