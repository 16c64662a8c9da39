"""MLflow helpers: where tracking lives, the registry client, versions and aliases, the registered model's
name, experiments, finding a run by run key, logging + registering a bundle as a pyfunc model (the
loader-module format that loopline.packaging.safe_load accepts).

The embedded default is `sqlite:///$LOOPLINE_HOME/mlflow.db` with artifacts under
`$LOOPLINE_HOME/artifacts/mlflow` (MLflow 3 refuses the file store). `MLFLOW_TRACKING_URI` wins.

Light at import (no mlflow, no pandas): the model server imports it for the default tracking URI and the
bundle's artifact name, and never imports `mlflow.pyfunc`. MLflow is imported inside the functions.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loopline.errors import ModelError

if TYPE_CHECKING:
    import pandas as pd

    from loopline.config import LifecycleConfig
    from loopline.data.contracts import Contract

log = logging.getLogger(__name__)

CHAMPION = "champion"  # the alias of the version in service
PREVIOUS = "previous"  # the one before it: where a rollback goes back to
CHALLENGER = "challenger"  # a candidate the server may route a share of traffic to
BUNDLE_ARTIFACT = "bundle"  # the bundle directory in a model (data/bundle; artifacts/bundle before)
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


def tracking_uri_for(cfg: LifecycleConfig | None, tracking_uri: str | None) -> str:
    """`tracking_uri` when given, else the default for the config's home (or $LOOPLINE_HOME)."""
    from loopline.config import default_home

    return tracking_uri or default_tracking_uri(cfg.home if cfg is not None else default_home())


def registry_client(tracking_uri: str):
    from mlflow import MlflowClient

    from loopline.storage.s3_retries import configure_mlflow_s3

    configure_mlflow_s3()  # retries of MLflow's S3 artifact client, when artifacts live on S3
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def model_name_for(cfg: LifecycleConfig) -> str:
    """The registered model's name: `model_name` from the config, else the dataset's name."""
    return cfg.model_name or contract_dataset(cfg)


def contract_dataset(cfg: LifecycleConfig) -> str:
    """The dataset the config works on (`data.dataset`, else the contract file's)."""
    from loopline.data.contract_registry import dataset_name

    return dataset_name(cfg.data)


def dataset_of_model(client, model: str) -> str | None:
    """The dataset the newest version of `model` was trained on (its run's tag); None for an unknown
    model. Commands that name only a model find their dataset, and so its contract, this way."""
    from mlflow.exceptions import MlflowException

    try:
        version = newest_version(client, model)
        return version_info(client, model, version)["dataset"]
    except (ModelError, MlflowException):
        return None


def newest_version(client, model: str) -> int:
    """The highest version number of a registered model. ModelError when it has none."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{model}'")
    except MlflowException as exc:
        raise ModelError(f"cannot list the versions of model {model!r}: {exc}") from exc
    if not versions:
        raise ModelError(f"model {model!r} has no registered versions: run `loopline train` first")
    return max(int(v.version) for v in versions)


def alias_version(client, model: str, alias: str) -> int | None:
    """The version an alias points at, or None when the alias is not set."""
    from mlflow.exceptions import MlflowException

    try:
        return int(client.get_model_version_by_alias(model, alias).version)
    except MlflowException as exc:
        code = str(getattr(exc, "error_code", ""))
        if (
            "RESOURCE_DOES_NOT_EXIST" in code
            or "INVALID_PARAMETER_VALUE" in code
            or "not found" in str(exc).lower()
        ):
            return None
        raise


def version_info(client, model: str, version: int) -> dict[str, Any]:
    """What a version was trained on, from its MLflow run's tags."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version(model, str(version))
    except MlflowException as exc:
        raise ModelError(f"model {model!r} has no version {version}") from exc
    tags: dict[str, str] = {}
    if mv.run_id:
        try:
            tags = client.get_run(mv.run_id).data.tags
        except MlflowException:
            tags = {}
    fv = tags.get("data.features_version")
    return {
        "version": int(mv.version),
        "run_id": mv.run_id,
        "source": mv.source,
        "dataset": tags.get("loopline.dataset"),
        "features_version": int(fv) if fv not in (None, "") else None,
        "transform_version": tags.get("data.transform_version"),
        "clean_version": tags.get("data.clean_version") or None,
        "contract_hash": tags.get("contract.hash"),
        # the lake's contract version; None for runs from before training tagged it
        "contract_version": int(cv) if (cv := tags.get("contract.version")) else None,
        "code_version": tags.get("code.version"),
        "version_tags": dict(mv.tags or {}),
    }


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
    Returns model_uri (models:/M/v), model_version and the run-relative artifact URI.

    The artifact holds the bundle (`data/bundle`: weights + JSON + YAML) and MLflow's metadata only; the
    code that loads it is the installed `loopline.packaging.pyfunc` (`loader_module`), never a pickle or a
    copy of loopline's sources (see loopline.packaging.safe_load)."""
    import tempfile

    import mlflow

    from loopline.packaging.pyfunc import LOADER_MODULE

    with tempfile.TemporaryDirectory(prefix="loopline-model-") as tmp:
        data_path = Path(bundle_dir)
        if data_path.name != BUNDLE_ARTIFACT:  # MLflow names the copy after the directory: data/bundle
            data_path = Path(tmp) / BUNDLE_ARTIFACT
            data_path.symlink_to(Path(bundle_dir).resolve(), target_is_directory=True)
        info = mlflow.pyfunc.log_model(
            name="model",
            loader_module=LOADER_MODULE,
            data_path=str(data_path),
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
