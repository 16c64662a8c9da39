"""The stack's addresses: local ports, the Prefect API and UI, the MLflow server and its stores, and
the Prefect database URL (SQLite under $LOOPLINE_HOME, or a PostgreSQL URL that is never stored or
shown with its password)."""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from flows.stack.state import StackError
from loopline.errors import ConfigError

HOST = "127.0.0.1"  # every stack server listens here only
DEFAULT_PREFECT_PORT = 4200
DEFAULT_MLFLOW_PORT = 5000


def port_or_free(preferred: int) -> int:
    """The conventional port when it is free on 127.0.0.1, else any free one."""
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise StackError("no free TCP port on 127.0.0.1")


def server_url(port: int) -> str:
    """A stack server's base URL (the Prefect UI, the MLflow server and its UI)."""
    return f"http://{HOST}:{port}"


def prefect_api_url(port: int) -> str:
    return f"{server_url(port)}/api"


def prefect_sqlite_url(root: Path) -> str:
    """The Prefect server's default database: SQLite under $LOOPLINE_HOME/prefect."""
    return f"sqlite:///{root / 'prefect' / 'prefect.db'}"


def mlflow_backend_store_uri(root: Path) -> str:
    """$LOOPLINE_HOME/mlflow.db: the same store the embedded default uses, so earlier runs stay visible."""
    return f"sqlite:///{root / 'mlflow.db'}"


def mlflow_artifact_root(root: Path) -> str:
    return (root / "artifacts" / "mlflow").as_uri()


def redact_url(url: str) -> str:
    """A connection URL with its password replaced, for stack.json and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def asyncpg_url(url: str) -> str:
    """Prefect's server talks to Postgres through asyncpg: `postgresql://` becomes `postgresql+asyncpg://`."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("postgres", "postgresql", "postgresql+asyncpg"):
        raise ConfigError(
            f"postgres URL {redact_url(url)!r}: expected postgresql://user:password@host:port/database"
        )
    return f"postgresql+asyncpg://{rest}"
