"""Stage records: an unchanged rerun of the lifecycle decides each stage's cache hit from metadata alone.

A stage that did its work leaves a record under $LOOPLINE_HOME/stage-records: the inputs it ran on (a key)
and the state it left behind (Delta table ids and versions, the @champion version). The next call with the
same key compares that state with the current one: equal means a rerun would find exactly what the first
run left (a duplicate batch, a finished run key, a version already decided), so the recorded result is
returned, marked `cached`, without reading data, taking the lake slot, or importing mlflow, torch or GX.
Anything else (a missing or unreadable record, a changed table, another champion, an S3 source whose
identity cannot be read cheaply) is a miss, and the stage runs as before: a record only ever skips work
that the stage would have found done, and the stage's own idempotency stays the safety net.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from loopline.config import LifecycleConfig
from tasks.common import code_hash, run_logger


def _records(cfg: LifecycleConfig) -> Path:
    return Path(cfg.home) / "stage-records"


def key_of(stage: str, *parts: Any) -> str:
    blob = json.dumps([stage, code_hash(), *parts], sort_keys=True, default=str)
    return f"{stage}-{hashlib.sha256(blob.encode()).hexdigest()[:24]}"


def load(cfg: LifecycleConfig, key: str, state: Any) -> dict | None:
    """The recorded result when the record's state equals `state` (None: no hit)."""
    if state is None:
        return None
    try:
        record = json.loads((_records(cfg) / f"{key}.json").read_text())
    except (OSError, ValueError):
        return None
    if record.get("state") != json.loads(json.dumps(state, default=str)):
        return None
    run_logger().info("%s: unchanged since the recorded run, nothing to do (stage record %s)", key, key)
    return record["result"]


def save(cfg: LifecycleConfig, key: str, state: Any, result: Any) -> None:
    """Write the record atomically; a record that cannot be written only costs the next run its shortcut."""
    if state is None:
        return
    directory = _records(cfg)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".{key}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"state": state, "result": result}, default=str))
        os.replace(tmp, directory / f"{key}.json")
    except OSError as exc:
        run_logger().debug("stage record %s not written: %s", key, exc)


def cached(result: dict) -> dict:
    """`result` marked as a hit (the task run's log says which record). A plain value, not a Cached state:
    a task returning a state hands its caller the state, and every caller would have to unwrap it."""
    return {**result, "cached": True}


# --- what a stage's record compares -------------------------------------------------------------------


def table_states(lake, uris: list[str]) -> list | None:
    """(table id, version) of each Delta table, from its log only (no data file is read)."""
    from loopline.storage import delta

    states = []
    for uri in uris:
        table = delta.open_table(lake, uri)
        states.append(None if table is None else [table.metadata().id, table.version()])
    return states


def file_identity(uri: str) -> list | None:
    """Path, size and mtime of a local file; None (no record) for anything else."""
    if "://" in uri and not uri.startswith("file://"):
        return None
    path = Path(uri.removeprefix("file://"))
    try:
        stat = path.stat()
    except OSError:
        return None
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def tracking_identity(tracking_uri: str) -> list | None:
    """The registry a record belongs to: its URI, plus the file's inode for SQLite (a new database is
    another registry even at the same path)."""
    if tracking_uri.startswith("sqlite:///"):
        try:
            return [tracking_uri, Path(tracking_uri.removeprefix("sqlite:///")).stat().st_ino]
        except OSError:
            return None
    return [tracking_uri]


def champion_alias(tracking_uri: str, model: str) -> int | None | bool:
    """@champion's version read without mlflow (loopline.serving.light_registry, as a model server reads
    it: the SQLite store or a tracking server's REST API). None: no champion; False: unknown here (the
    caller asks MLflow itself)."""
    from loopline.serving.light_registry import light_registry

    try:
        if (
            tracking_uri.startswith("sqlite:///")
            and not Path(tracking_uri.removeprefix("sqlite:///")).exists()
        ):
            return None  # no registry database yet: no model, no champion
        reader = light_registry(tracking_uri)
        if reader is not None:
            target = reader.alias(model, "champion")
            return None if target is None else int(target.version)
    except Exception as exc:  # any doubt: ask MLflow
        run_logger().debug("champion of %s not read cheaply: %s", model, exc)
    return False
