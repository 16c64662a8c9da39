"""The registry reads of a model server, without importing MLflow (about 100 MB RSS and 1 s of start-up per
replica).

A model server asks the registry three things: which version an alias points at (with its tags), where a
version's artifacts are (MLflow's `get_model_version_download_uri`), and the files under that root. For
the registries loopline sets up itself this module answers them directly:
- the embedded SQLite store (`sqlite:///.../mlflow.db`): read-only SQL on MLflow's own tables, as
  `loopline status` reads them (loopline.packaging.mlflow_sqlite), on a fresh connection per question;
- an MLflow tracking server (`http://`, `https://`): its REST API (`registered-models/alias`,
  `model-versions/get-download-uri`), with MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/_PASSWORD.
Artifacts are read from a local directory (a `file:` URI or a plain path, which is what `loopline up`'s
MLflow server and the embedded store record) or through the tracking server's artifact proxy
(`mlflow-artifacts:/`).

Anything else raises `Unsupported` (`light_registry` returns None for a tracking URI it cannot serve):
another scheme (S3 artifacts, Databricks), settings this module does not implement (MLflow workspaces,
client certificates, custom TLS or auth plugins), an SQLite file of another schema. The caller then uses
MLflow's client, which imports MLflow.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import sqlite3
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import NamedTuple
from urllib.request import url2pathname

from loopline.errors import ModelError
from loopline.packaging import mlflow_sqlite
from loopline.packaging.mlflow_sqlite import DELETED_VERSION_STAGE

# settings of MLflow's client this module does not implement: with any of them set, MLflow's client is used
_MLFLOW_ONLY_SETTINGS = (
    "MLFLOW_TRACKING_AUTH",
    "MLFLOW_TRACKING_AWS_SIGV4",
    "MLFLOW_TRACKING_INSECURE_TLS",
    "MLFLOW_TRACKING_SERVER_CERT_PATH",
    "MLFLOW_TRACKING_CLIENT_CERT_PATH",
    "MLFLOW_ENABLE_WORKSPACES",
    "MLFLOW_WORKSPACE",
)
HTTP_TIMEOUT_SECONDS = 30.0
HTTP_TRIES = 3  # on a refused connection, 429 or 5xx: 0.5 s, then 1 s between tries


class Unsupported(Exception):
    """This registry, artifact location or setting needs MLflow's client."""


class AliasTarget(NamedTuple):
    version: str
    tags: dict[str, str]


def light_registry(tracking_uri: str) -> SqliteRegistry | RestRegistry | None:
    """The light reader for `tracking_uri`, or None where MLflow's client is needed."""
    if any(
        os.environ.get(name, "").strip().lower() not in ("", "false", "0") for name in _MLFLOW_ONLY_SETTINGS
    ):
        return None
    parsed = urllib.parse.urlparse(tracking_uri)
    if parsed.scheme == "sqlite":
        path = tracking_uri[len("sqlite:///") :] if tracking_uri.startswith("sqlite:///") else ""
        return SqliteRegistry(Path(path)) if path and Path(path).is_file() else None
    if parsed.scheme in ("http", "https") and parsed.netloc:
        return RestRegistry(tracking_uri.rstrip("/"))
    return None


class _Artifacts:
    """Files under an artifact root: local directories here; the tracking server's proxy in RestRegistry."""

    def read(self, uri: str) -> bytes:
        """One artifact file's bytes (OSError when it is not there)."""
        return _local(uri).read_bytes()

    def download_dir(self, uri: str, dst: str | os.PathLike) -> Path:
        """The directory at `uri`, copied to `dst/<its name>` (as MLflow's download_artifacts places it)."""
        src = _local(uri)
        if not src.is_dir():
            raise FileNotFoundError(f"no such artifact directory: {src}")
        target = Path(dst) / src.name
        shutil.copytree(src, target, dirs_exist_ok=True)
        return target


class SqliteRegistry(_Artifacts):
    def __init__(self, path: Path):
        self.path = path

    def _select(self, table: str, sql: str, *args) -> list[tuple]:
        """loopline.packaging.mlflow_sqlite.select on a fresh read-only connection."""
        try:
            db = mlflow_sqlite.connect(self.path)
            try:
                return mlflow_sqlite.select(db, table, sql, *args)
            finally:
                db.close()
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise  # a transient state: the caller's next poll asks again
            raise Unsupported(f"{self.path}: {exc}") from exc  # another schema: MLflow's client knows it
        except sqlite3.DatabaseError as exc:
            raise Unsupported(f"{self.path}: {exc}") from exc

    def _live_version(self, name: str, version, columns: str) -> tuple | None:
        rows = self._select(
            "model_versions",
            f"SELECT {columns} FROM {{t}} WHERE name = ? AND version = ? AND current_stage != ?",
            name,
            int(version),
            DELETED_VERSION_STAGE,
        )
        return rows[0] if rows else None

    def alias(self, name: str, alias: str) -> AliasTarget | None:
        rows = self._select(
            "registered_model_aliases", "SELECT version FROM {t} WHERE name = ? AND alias = ?", name, alias
        )
        if not rows or self._live_version(name, rows[0][0], "version") is None:
            return None
        version = rows[0][0]
        tags = self._select(
            "model_version_tags", "SELECT key, value FROM {t} WHERE name = ? AND version = ?", name, version
        )
        return AliasTarget(str(version), {k: v for k, v in tags})

    def download_uri(self, name: str, version: str) -> str:
        row = self._live_version(name, version, "storage_location, source")
        if row is None:
            raise ModelError(f"model {name!r} has no version {version}")
        storage, source = row
        return storage or source


class RestRegistry(_Artifacts):
    def __init__(self, base: str):
        self.base = base
        token = os.environ.get("MLFLOW_TRACKING_TOKEN")
        user, password = (
            os.environ.get("MLFLOW_TRACKING_USERNAME"),
            os.environ.get("MLFLOW_TRACKING_PASSWORD"),
        )
        self.headers = {"User-Agent": "loopline-serving"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        elif user and password:
            basic = base64.b64encode(f"{user}:{password}".encode()).decode()
            self.headers["Authorization"] = f"Basic {basic}"

    def _get(self, path: str, params: dict | None = None) -> tuple[int, bytes]:
        url = f"{self.base}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        for attempt in range(HTTP_TRIES):
            request = urllib.request.Request(url, headers=self.headers)
            try:
                with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_SECONDS) as response:
                    return response.status, response.read()
            except urllib.error.HTTPError as exc:
                body = exc.read()
                if (exc.code == 429 or exc.code >= 500) and attempt < HTTP_TRIES - 1:
                    time.sleep(0.5 * 2**attempt)
                    continue
                return exc.code, body
            except (urllib.error.URLError, OSError):
                if attempt == HTTP_TRIES - 1:
                    raise
                time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")

    def _json(self, path: str, params: dict) -> tuple[int, dict]:
        status, body = self._get(path, params)
        try:
            return status, json.loads(body or b"{}")
        except ValueError:
            return status, {"message": body[:200].decode("utf-8", "replace")}

    def alias(self, name: str, alias: str) -> AliasTarget | None:
        status, doc = self._json("/api/2.0/mlflow/registered-models/alias", {"name": name, "alias": alias})
        if status == 200:
            mv = doc.get("model_version") or {}
            return AliasTarget(str(mv["version"]), {t["key"]: t.get("value", "") for t in mv.get("tags", [])})
        if _missing(status, doc):
            return None
        raise OSError(
            f"MLflow at {self.base}: alias {alias!r} of {name!r}: HTTP {status} {doc.get('message', '')}"
        )

    def download_uri(self, name: str, version: str) -> str:
        status, doc = self._json(
            "/api/2.0/mlflow/model-versions/get-download-uri", {"name": name, "version": str(version)}
        )
        if status == 200 and doc.get("artifact_uri"):
            return doc["artifact_uri"]
        if _missing(status, doc):
            raise ModelError(f"model {name!r} has no version {version}: {doc.get('message', '')}")
        raise OSError(
            f"MLflow at {self.base}: version {version} of {name!r}: HTTP {status} {doc.get('message', '')}"
        )

    # artifacts: local roots as in _Artifacts; `mlflow-artifacts:/` through this server's proxy
    def read(self, uri: str) -> bytes:
        proxied = _proxied_path(uri)
        if proxied is None:
            return super().read(uri)
        status, body = self._get(f"/api/2.0/mlflow-artifacts/artifacts/{urllib.parse.quote(proxied)}")
        if status != 200:
            raise OSError(f"{uri}: HTTP {status} from {self.base}")
        return body

    def download_dir(self, uri: str, dst: str | os.PathLike) -> Path:
        proxied = _proxied_path(uri)
        if proxied is None:
            return super().download_dir(uri, dst)
        target = Path(dst) / proxied.rstrip("/").rsplit("/", 1)[-1]
        self._copy_tree(proxied.rstrip("/"), target)
        if not target.is_dir():
            raise FileNotFoundError(f"{uri}: no such artifact directory at {self.base}")
        return target

    def _copy_tree(self, path: str, target: Path) -> None:
        status, doc = self._json("/api/2.0/mlflow-artifacts/artifacts", {"path": path})
        if status != 200:
            raise OSError(f"listing {path}: HTTP {status} from {self.base}")
        files = doc.get("files", [])
        if not files:
            return
        target.mkdir(parents=True, exist_ok=True)
        for item in files:
            name = item["path"].rsplit("/", 1)[-1]
            if name in ("", ".", "..") or "\\" in name:
                raise OSError(f"listing {path}: unusable artifact name {item['path']!r}")
            if item.get("is_dir"):
                self._copy_tree(f"{path}/{name}", target / name)
            else:
                (target / name).write_bytes(self.read(f"mlflow-artifacts:/{path}/{name}"))


def _missing(status: int, doc: dict) -> bool:
    """MLflow's answer for an alias, model or version that does not exist (a missing alias comes back as 400
    "... not found": the same test RegistrySource applies to MLflow's client's exceptions)."""
    if status == 404 or doc.get("error_code") == "RESOURCE_DOES_NOT_EXIST":
        return True
    return 400 <= status < 500 and "not found" in str(doc.get("message", "")).lower()


def _proxied_path(uri: str) -> str | None:
    """The proxy path of a `mlflow-artifacts:/path` URI (None for other schemes; one naming another host is
    left to MLflow's client)."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme != "mlflow-artifacts":
        return None
    if parsed.netloc:
        raise Unsupported(f"{uri}: an artifact proxy on another host")
    return urllib.parse.unquote(parsed.path).lstrip("/")


def _local(uri: str) -> Path:
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "file" and parsed.netloc in ("", "localhost"):
        return Path(url2pathname(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        return Path(uri)
    raise Unsupported(f"{uri}: artifacts behind {parsed.scheme}: need MLflow's client")
