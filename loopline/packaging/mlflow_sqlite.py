"""Reading MLflow's embedded SQLite store with sqlite3, without importing MLflow (about 1.5 s and 100 MB):
`loopline status` and a model server (loopline.serving.light_registry) read it so.

Read-only connections, MLflow 3's tables as MLflow's SQL store reads them: rows of the default workspace
(where a table has workspaces), deleted model versions left out by the caller (`DELETED_VERSION_STAGE`).
A schema this does not know raises sqlite3's errors: the callers then use MLflow's client."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

DEFAULT_WORKSPACE = "default"  # MLflow's, in single-tenant mode (the embedded registry)
DELETED_VERSION_STAGE = "Deleted_Internal"  # MLflow's mark on a deleted model version it keeps a row for


def connect(path: Path) -> sqlite3.Connection:
    """A read-only connection to the store at `path` (a writer holding the file makes it wait up to 10 s)."""
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)


def select(db: sqlite3.Connection, table: str, sql: str, *args: Any) -> list[tuple]:
    """`sql` on `table` ({t}; its WHERE clause last), in MLflow's default workspace where the table has
    workspaces (MLflow 3)."""
    sql = sql.format(t=table)
    if any(row[1] == "workspace" for row in db.execute(f"PRAGMA table_info({table})")):
        sql, args = f"{sql} AND workspace = ?", (*args, DEFAULT_WORKSPACE)
    return db.execute(sql, args).fetchall()
