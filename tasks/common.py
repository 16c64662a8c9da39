"""Shared pieces of the task layer: the lake, the code version used in cache keys, events that say
whether the API took them, and bounded waits for Prefect concurrency slots."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
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


EMIT_TIMEOUT_SECONDS = 10.0  # per request: an API that does not answer in this is as good as down
EMIT_MAX_RETRIES = 2  # the client retries 429/502/503 after 2 s and 4 s: a short wait for a busy API


def emit(event: str, resource_id: str, payload: dict) -> bool:
    """Send a Prefect event and say whether the API accepted it (true only on its 2xx answer).

    `prefect.events.emit_event` only queues the event for a background worker, so it cannot tell; this
    POSTs it to the API's `/events` route with the Prefect client (a `prefect server start` URL, Prefect
    Cloud, or the ephemeral API alike). Call it only after the state change it announces is committed.
    Never fails the stage it reports on: a refusal or an unreachable API is one warning and False."""
    try:
        _post_event(event, resource_id, payload)
    except Exception as exc:  # an unreachable API must not fail an ingest that already committed
        run_logger().warning("could not emit %s for %s: %s", event, resource_id, _one_line(exc))
        return False
    return True


def _post_event(event: str, resource_id: str, payload: dict) -> None:
    """POST one event with at most EMIT_MAX_RETRIES retries and EMIT_TIMEOUT_SECONDS per request. Inside a
    run this reuses the run's own API client (a new client and a settings copy per event cost ~50 ms of CPU
    here, three or four times per lifecycle); the timeout goes on the request, the retry count on the
    settings the client reads at send time."""
    from prefect import get_client
    from prefect.context import SettingsContext, get_settings_context
    from prefect.events import Event

    body = Event(
        event=event,
        resource={"prefect.resource.id": resource_id},
        payload=payload,
        related=_related_runs(),
    ).model_dump(mode="json")
    current = get_settings_context()
    with SettingsContext(profile=current.profile, settings=_emit_settings(current.settings)):
        with get_client(sync_client=True) as client:  # the run's client inside a run, else a new one
            client.request("POST", "/events", json=[body], timeout=EMIT_TIMEOUT_SECONDS)  # raises unless 2xx


_emit_settings_cache: list = [None, None]  # [the settings it was copied from, the copy with our retries]


def _emit_settings(base):
    """`base` with PREFECT_CLIENT_MAX_RETRIES = EMIT_MAX_RETRIES, copied once per distinct settings object
    (Prefect's settings are immutable; a copy costs ~25 ms)."""
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES

    cached_base, copy = _emit_settings_cache
    if cached_base is not base:
        copy = base.copy_with_update(updates={PREFECT_CLIENT_MAX_RETRIES: EMIT_MAX_RETRIES})
        _emit_settings_cache[:] = [base, copy]
    return copy


def _related_runs() -> list[dict[str, str]]:
    """The flow run and task run that emit, as related resources (what emit_event's worker adds), so the
    event links to its run in the UI. Read from the run context: no API call."""
    from prefect.context import FlowRunContext, TaskRunContext

    flow_run = getattr(FlowRunContext.get(), "flow_run", None)
    task_run = getattr(TaskRunContext.get(), "task_run", None)
    related = []
    flow_run_id = getattr(flow_run, "id", None) or getattr(task_run, "flow_run_id", None)
    if flow_run_id:
        related.append(
            {"prefect.resource.id": f"prefect.flow-run.{flow_run_id}", "prefect.resource.role": "flow-run"}
        )
        if flow_run is not None:
            related[-1]["prefect.resource.name"] = flow_run.name
    if task_run is not None:
        related.append(
            {
                "prefect.resource.id": f"prefect.task-run.{task_run.id}",
                "prefect.resource.role": "task-run",
                "prefect.resource.name": task_run.name,
            }
        )
    return related


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:300]}"


@contextmanager
def hold_slots(limit: str, occupy: int, timeout_s: float, setting: str, purpose: str) -> Iterator[None]:
    """Hold `occupy` slots of the Prefect global concurrency limit `limit` for the block, waiting at most
    `timeout_s` (the config field `setting`) for them. Out of time: WaitTimeoutError, saying who holds
    what and what to do. Only the wait is bounded, never the block."""
    from prefect.concurrency.sync import concurrency

    from loopline.errors import WaitTimeoutError

    with ExitStack() as held:
        try:
            held.enter_context(concurrency(limit, occupy=occupy, timeout_seconds=timeout_s, strict=True))
        except TimeoutError:
            raise WaitTimeoutError(
                _slot_timeout_message(limit, occupy, timeout_s, setting, purpose)
            ) from None
        yield


def _slot_timeout_message(limit: str, occupy: int, timeout_s: float, setting: str, purpose: str) -> str:
    from prefect import get_client

    try:
        with get_client(sync_client=True) as client:
            current = client.read_global_concurrency_limit_by_name(limit)
        state = f" ({current.active_slots} of its {current.limit} slot(s) in use)"
    except Exception:  # the message must not fail on a second API call
        state = ""
    return (
        f"waited {timeout_s:g} s ({setting}) for {occupy} slot(s) of the Prefect global concurrency limit "
        f"{limit!r}{state} to {purpose}, and other runs still hold them. Let those runs finish (a crashed "
        f"holder's lease frees its slots within minutes), see who holds them with `prefect gcl inspect "
        f"{limit}`, free stuck ones with `prefect gcl update {limit} --active-slots 0`, raise the limit with "
        f"`prefect gcl update {limit} --limit N`, or raise {setting}."
    )


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


def unlinked(name: str) -> str:
    """A copy of `name` that no subflow's result holds, for a flow to pass to a subflow or to its tasks.
    Prefect links the values a flow run returns to that run, and a task later given one of them records the
    run as a `flow_run` input, which the UI of Prefect 3.8.8 cannot parse: the flow run's Task Runs tab
    shows none of its task runs (PrefectHQ/prefect#18680). So a subflow gets its own copy (what it returns
    holds that one), and the tasks after it another."""
    return name.encode().decode()
