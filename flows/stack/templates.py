"""A migrated Prefect database to start a fresh home from, instead of migrating an empty one.

`prefect server start` on an empty SQLite file runs every Alembic migration of its version before it answers
/health: a few CPU seconds on the critical path of every `loopline up` on a new home. The first such start on a
machine keeps a copy of the database it migrated (SQLite's backup API: a consistent snapshot, taken right after
/health and before `up` creates anything of its own); later fresh homes start from a copy of it, and the
server's own start-up check finds nothing left to migrate.

The copy holds only what Prefect's start-up writes (its schema, block types and schemas), nothing of a home:
keyed by Prefect's version, kept under $LOOPLINE_CACHE_DIR (default ~/.cache/loopline). Only SQLite, only for a
database that does not exist yet; with LOOPLINE_DB_TEMPLATES=0 every home migrates its own, as before.
MLflow's database is not templated: its Default experiment records the home's artifact path.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from importlib.metadata import version
from pathlib import Path


def enabled() -> bool:
    return os.environ.get("LOOPLINE_DB_TEMPLATES", "1").strip().lower() not in ("0", "false", "no", "off")


def template_path() -> Path:
    cache = os.environ.get("LOOPLINE_CACHE_DIR") or Path.home() / ".cache" / "loopline"
    return Path(cache) / "db-templates" / f"prefect-{version('prefect')}.db"


def seed(db: Path) -> bool:
    """Copy the template to `db` when `db` does not exist and a template does. True: seeded."""
    template = template_path()
    if not enabled() or db.exists() or not template.is_file():
        return False
    db.parent.mkdir(parents=True, exist_ok=True)
    partial = db.with_name(f".{db.name}.seeding-{os.getpid()}")
    try:
        shutil.copyfile(template, partial)
        os.replace(partial, db)  # the server never sees a half-copied file
    except OSError:
        partial.unlink(missing_ok=True)
        return False
    return True


def keep(db: Path) -> bool:
    """Save a snapshot of `db` (just migrated by a healthy server) as the template, unless one exists.
    Never fails `up`: a template is only a shortcut. True: saved."""
    template = template_path()
    if not enabled() or template.is_file() or not db.is_file():
        return False
    partial = template.with_name(f".{template.name}.{os.getpid()}")
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        source = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            target = sqlite3.connect(partial)
            try:
                source.backup(target)
                target.execute("PRAGMA journal_mode = DELETE")  # one self-contained file, no -wal beside it
            finally:
                target.close()
        finally:
            source.close()
        os.replace(partial, template)
    except (OSError, sqlite3.Error):
        partial.unlink(missing_ok=True)
        return False
    return True
