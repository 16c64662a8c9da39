"""Where serving finds its models: the MLflow registry (aliases) and the model's bundle directory.

The registry is read without MLflow where loopline.serving.light_registry can (the embedded SQLite store, an
MLflow tracking server's REST API; artifacts in local directories or behind the server's proxy): importing
MLflow costs a replica about 100 MB RSS and 1 s of start-up. Anywhere else, or once the light reader says
it cannot (`Unsupported`), MLflow's client is used from then on, imported here at start-up or by the
background poll, never on the request path. Every version passes the loader gate
(loopline.packaging.safe_load: its MLmodel read as YAML) before anything of it is downloaded or loaded: a
model that needs unpickling or code from the artifact is refused with a ModelError. Then only the bundle (a
few files of weights and JSON) is downloaded, into `cache_dir/<model>/<version>`.
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
        from loopline.serving.light_registry import light_registry

        self.tracking_uri = tracking_uri
        self.cache_dir = Path(cache_dir)
        self.light = light_registry(tracking_uri)
        self._client = None
        if self.light is None:
            _ = self.client  # MLflow's client from the start: its errors surface at start-up

    @property
    def client(self):
        """MLflow's client, made on first use."""
        if self._client is None:
            os.environ.setdefault(
                "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"
            )  # no progress bars in server logs
            from loopline.packaging.registry import registry_client

            self._client = registry_client(self.tracking_uri)
        return self._client

    def _unsupported(self, exc: Exception) -> None:
        log.info("registry %s: %s; reading it through MLflow's client from now on", self.tracking_uri, exc)
        self.light = None

    def resolve(self, name: str, alias: str) -> str | None:
        """The version `alias` points at, or None when the alias (or the model) does not exist."""
        target = self._alias(name, alias)
        return None if target is None else target[0]

    def resolve_rollout(self, name: str) -> tuple[str | None, dict | None]:
        """(the version @challenger points at or None, its rollout tag parsed or None): one registry call, so
        the version and the weight every replica applies come from the same read."""
        import json

        target = self._alias(name, "challenger")
        if target is None:
            return None, None
        version, tags = target
        raw = tags.get(ROLLOUT_TAG)
        try:
            rollout = json.loads(raw) if raw else None
            weight = float(rollout["weight"]) if isinstance(rollout, dict) else None
        except (ValueError, KeyError, TypeError):
            rollout, weight = None, None
        if weight is None or not 0 <= weight <= 1:  # a hand-written or broken tag: no rollout instructions
            log.warning("ignoring the %s tag of %s v%s: %r", ROLLOUT_TAG, name, version, raw)
            rollout = None
        return version, rollout

    def _alias(self, name: str, alias: str) -> tuple[str, dict[str, str]] | None:
        """(version, its tags) of `alias`, or None when the alias (or the model) does not exist."""
        from loopline.serving.light_registry import Unsupported

        if self.light is not None:
            try:
                return self.light.alias(name, alias)
            except Unsupported as exc:
                self._unsupported(exc)
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version_by_alias(name, alias)
        except MlflowException as exc:
            if (
                "RESOURCE_DOES_NOT_EXIST" in str(getattr(exc, "error_code", ""))
                or "not found" in str(exc).lower()
            ):
                return None
            raise
        return str(mv.version), dict(mv.tags or {})

    def _fetch(self, name: str, version: str, dst: Path):
        """The gate, then the bundle directory into `dst`: (its path, the load plan)."""
        from loopline.packaging.safe_load import (
            cannot_download,
            download_bundle,
            fetch_bundle,
            gate_artifacts,
        )
        from loopline.serving.light_registry import Unsupported

        light = self.light
        if light is not None:
            try:
                root = light.download_uri(name, version).rstrip("/")

                def fetched(fetch, uri: str, *args):
                    try:
                        return fetch(uri, *args)
                    except OSError as exc:
                        raise cannot_download(name, version, uri, exc) from exc

                plan = gate_artifacts(
                    root, name, version, lambda rel: fetched(light.read, f"{root}/{rel}")
                ).plan
                path = download_bundle(
                    root, plan, dst, download_dir=lambda uri, to: fetched(light.download_dir, uri, to)
                )
                return path, plan
            except Unsupported as exc:
                self._unsupported(exc)
                shutil.rmtree(dst, ignore_errors=True)
                dst.mkdir(parents=True)
        return fetch_bundle(self.client, name, version, dst, tracking_uri=self.tracking_uri)

    def download(self, name: str, version: str) -> Path:
        """The bundle directory of a model version (gated and downloaded once per version)."""
        target = self.cache_dir / name / str(version)
        if (target / BUNDLE_ARTIFACT / "bundle.json").is_file():
            return target / BUNDLE_ARTIFACT
        tmp = target.with_name(f".{target.name}.partial-{os.getpid()}")  # servers on one home may race
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            path, plan = self._fetch(name, version, tmp)
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
