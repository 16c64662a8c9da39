"""Shared pieces of the task layer: the lake and the code version used in cache keys."""

from __future__ import annotations

import hashlib
import logging
import re
from functools import lru_cache
from pathlib import Path

from loopline.config import LifecycleConfig
from loopline.storage.lake import Lake

SOURCE_ROOTS = ("loopline", "tasks")


def lake_for(cfg: LifecycleConfig) -> Lake:
    from blocks.lake import resolve_lake

    return resolve_lake(cfg.home)


@lru_cache(maxsize=1)
def code_hash() -> str:
    """Hash of the core and task sources: a cache key part, so a code change invalidates cached results."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for pkg in SOURCE_ROOTS:
        for path in sorted((root / pkg).rglob("*.py")):
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def slug(name: str) -> str:
    """Prefect artifact keys and limit names allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "model"


def ensure_global_limit(client, name: str, slots: int, *, update: bool = False) -> int:
    """Create the Prefect global concurrency limit `name` with `slots` when it is missing (a missing limit
    limits nothing); with `update`, also set an existing one to `slots`. Safe when two runs race to create
    it. `client` is a sync Prefect client. Returns the limit's slot count."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    try:
        current = client.read_global_concurrency_limit_by_name(name).limit
    except ObjectNotFound:
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=slots))
            return slots
        except ObjectAlreadyExists:  # created by a concurrent run
            current = client.read_global_concurrency_limit_by_name(name).limit
    if update and current != slots:
        client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=slots))
        return slots
    return current


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run logger inside a run, a plain logger outside one."""
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:  # MissingContextError outside a flow/task run
        return logging.getLogger("loopline")


def emit(event: str, resource_id: str, payload: dict) -> None:
    """Emit a Prefect event; never fails the stage it reports on."""
    try:
        from prefect.events import emit_event

        emit_event(event=event, resource={"prefect.resource.id": resource_id}, payload=payload)
    except Exception as exc:  # an unreachable API must not fail an ingest that already committed
        run_logger().warning("could not emit %s: %s", event, exc)


def retry_unless_user_error(task, task_run, state) -> bool:
    """Retry I/O hiccups, not the user's mistakes: a bad file or contract fails the same way every time."""
    from loopline.errors import LooplineError

    try:
        state.result()
    except LooplineError:
        return False
    except BaseException:
        return True
    return True
