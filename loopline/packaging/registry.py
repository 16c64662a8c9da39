"""MLflow helpers: where tracking lives, experiments, finding a run by run key, logging + registering
a bundle as a pyfunc model.

The embedded default is `sqlite:///$LOOPLINE_HOME/mlflow.db` with artifacts under
`$LOOPLINE_HOME/artifacts/mlflow` (MLflow refuses the file store; STACK.md). `MLFLOW_TRACKING_URI` wins.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd

from loopline.data.contracts import Contract

log = logging.getLogger(__name__)

RUN_KEY_TAG = "loopline.run_key"
MLFLOW_TYPES = {
    "int": "long",
    "float": "double",
    "bool": "boolean",
    "string": "string",
    "category": "string",
    "timestamp": "datetime",
}


def default_tracking_uri(home: str) -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path(home).resolve() / 'mlflow.db'}"


def artifact_root(home: str) -> str:
    return (Path(home).resolve() / "artifacts" / "mlflow").as_uri()


def experiment_name(model_name: str) -> str:
    return f"loopline-{model_name}"


def ensure_experiment(client, name: str, home: str, tracking_uri: str) -> str:
    """The experiment's id, creating it with artifacts under $LOOPLINE_HOME for an embedded store."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None if tracking_uri.startswith(("http://", "https://", "databricks")) else artifact_root(home)
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # created concurrently by another process
        return client.get_experiment_by_name(name).experiment_id


def find_runs_by_key(client, experiment_id: str, run_key: str) -> list:
    """Runs of this run key, newest first."""
    return client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key}'",
        order_by=["attributes.start_time DESC"],
        max_results=20,
    )


def model_signature(contract: Contract, predictions: Any):
    """Input schema from the contract (feature columns required unless nullable; id and label optional),
    output inferred from example predictions."""
    from mlflow.models import infer_signature
    from mlflow.types.schema import ColSpec, Schema

    cols = []
    for name, spec in contract.columns.items():
        kind = MLFLOW_TYPES[spec.type]
        if spec.type == "int" and spec.nullable:
            kind = "double"  # a null int arrives as NaN in a float column
        optional = name in (contract.id, contract.label) or spec.nullable
        cols.append(ColSpec(kind, name, required=not optional))
    output = infer_signature(None, predictions).outputs if predictions is not None else None
    from mlflow.models import ModelSignature

    return ModelSignature(inputs=Schema(cols), outputs=output)


def pip_requirements() -> list[str]:
    """Explicit requirements (inference costs ~10 s per log): what loading a bundle imports."""
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for dist in ("mlflow", "torch", "numpy", "pandas", "pyarrow", "deltalake", "pyyaml", "pydantic"):
        try:
            reqs.append(f"{dist}=={version(dist).split('+')[0]}")
        except PackageNotFoundError:
            reqs.append(dist)
    return reqs


def log_and_register_bundle(
    bundle_dir: str,
    *,
    model_name: str,
    contract: Contract,
    input_example: pd.DataFrame,
    predictions: Any,
    tags: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Log the bundle as a pyfunc model in the active run and register a new version (no alias).
    Returns model_uri (models:/M/v), model_version and the run-relative artifact URI."""
    import mlflow

    import loopline
    from loopline.packaging.pyfunc import BUNDLE_ARTIFACT, LooplineModel

    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=LooplineModel(),
        artifacts={BUNDLE_ARTIFACT: bundle_dir},
        code_paths=[str(Path(loopline.__file__).resolve().parent)],
        signature=model_signature(contract, predictions),
        input_example=input_example,
        pip_requirements=pip_requirements(),
        registered_model_name=model_name,
        await_registration_for=300,
        tags=tags,
    )
    version = str(info.registered_model_version)
    return {
        "model_uri": f"models:/{model_name}/{version}",
        "model_version": version,
        "logged_model_uri": info.model_uri,
    }
