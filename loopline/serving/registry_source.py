"""Where serving finds its models: the MLflow registry (aliases) and the model's bundle directory.

MLflow is imported here, at start-up and by the background poll, never on the request path. Every version
passes the loader gate (loopline.packaging.safe_load: its MLmodel read as YAML) before anything of it is
downloaded or loaded: a model that needs unpickling or code from the artifact is refused with a ModelError.
Then only the bundle (a few files of weights and JSON) is downloaded, into `cache_dir/<model>/<version>`.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from loopline.errors import ModelError
from loopline.packaging.registry import BUNDLE_ARTIFACT  # light: no mlflow at import

log = logging.getLogger(__name__)

# A rollout's instructions to every replica: a JSON tag on the @challenger version, {"mode": "canary" or
# "shadow", "weight": share of requests, "step": index}. Written by loopline.release.rollout, read at each poll.
ROLLOUT_TAG = "loopline.rollout"


class RegistrySource:
    def __init__(self, tracking_uri: str, cache_dir: str | Path):
        os.environ.setdefault(
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"
        )  # no progress bars in server logs
        from loopline.packaging.registry import registry_client

        self.tracking_uri = tracking_uri
        self.client = registry_client(tracking_uri)
        self.cache_dir = Path(cache_dir)

    def resolve(self, name: str, alias: str) -> str | None:
        """The version `alias` points at, or None when the alias (or the model) does not exist."""
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(name, alias).version)
        except MlflowException as exc:
            if (
                "RESOURCE_DOES_NOT_EXIST" in str(getattr(exc, "error_code", ""))
                or "not found" in str(exc).lower()
            ):
                return None
            raise

    def resolve_rollout(self, name: str) -> tuple[str | None, dict | None]:
        """(the version @challenger points at or None, its rollout tag parsed or None): one registry call, so
        the version and the weight every replica applies come from the same read."""
        import json

        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version_by_alias(name, "challenger")
        except MlflowException as exc:
            if (
                "RESOURCE_DOES_NOT_EXIST" in str(getattr(exc, "error_code", ""))
                or "not found" in str(exc).lower()
            ):
                return None, None
            raise
        raw = (mv.tags or {}).get(ROLLOUT_TAG)
        try:
            rollout = json.loads(raw) if raw else None
            weight = float(rollout["weight"]) if isinstance(rollout, dict) else None
        except (ValueError, KeyError, TypeError):
            rollout, weight = None, None
        if weight is None or not 0 <= weight <= 1:  # a hand-written or broken tag: no rollout instructions
            log.warning("ignoring the %s tag of %s v%s: %r", ROLLOUT_TAG, name, mv.version, raw)
            rollout = None
        return str(mv.version), rollout

    def download(self, name: str, version: str) -> Path:
        """The bundle directory of a model version (gated and downloaded once per version)."""
        from loopline.packaging.safe_load import fetch_bundle

        target = self.cache_dir / name / str(version)
        if (target / BUNDLE_ARTIFACT / "bundle.json").is_file():
            return target / BUNDLE_ARTIFACT
        tmp = target.with_name(f".{target.name}.partial-{os.getpid()}")  # servers on one home may race
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            path, plan = fetch_bundle(self.client, name, version, tmp, tracking_uri=self.tracking_uri)
        except ModelError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("model %r version %s: loaded by %s", name, version, plan.loader)
        if (
            path != tmp / BUNDLE_ARTIFACT
        ):  # the cache layout is <version>/bundle whatever the artifact names it
            path.rename(tmp / BUNDLE_ARTIFACT)
        try:
            tmp.rename(target)
        except OSError:  # another process finished the same version first: use its copy
            shutil.rmtree(tmp, ignore_errors=True)
            if not (target / BUNDLE_ARTIFACT / "bundle.json").is_file():
                raise
        return target / BUNDLE_ARTIFACT
