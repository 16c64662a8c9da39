"""Who is champion: MLflow aliases, the promotion history, the per-model lock and the check-and-set move.

State lives in the MLflow registry, so any MLflow client sees it:
- `@champion` is the serving model, `@previous` the one before it (what a rollback goes back to).
- Every move is a registered-model tag `loopline.history.<seq>` (JSON: seq, action, time, champion,
  previous, from, reason, metrics, stack). `stack` is the chain of champions after the move, so a rollback
  can walk back further than `@previous`, and replaying the entries (promote pushes, rollback pops)
  reproduces it: the history can be audited and replayed.
- The moved version gets tags too (`loopline.promoted_at`, `loopline.promotion_reason`, ...).

Serialisation: a move happens under an exclusive file lock per model (threads and processes on this host),
and is a check-and-set: the champion read before the decision must still be the champion right before the
alias moves, otherwise the caller decides again. The task layer adds a Prefect global concurrency limit per
model on top, which also covers workers on other hosts.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loopline.errors import LooplineError, ModelError
from loopline.faults import kill_point
from loopline.packaging.registry import CHAMPION, PREVIOUS, alias_version, registry_client, tracking_uri_for

HISTORY_PREFIX = "loopline.history."
STACK_LIMIT = 100  # champions remembered per entry; a rollback further back than this is a manual alias move
LOCK_POLL_SECONDS = 0.05
SQLITE_RETRIES = 20  # "database is locked" under concurrent SQLite writers: retry with backoff


class PromotionConflict(LooplineError):
    """The champion moved between the decision and the alias move (check-and-set failed)."""


@dataclass
class ChampionState:
    champion: int | None
    previous: int | None
    stack: list[int]
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def next_seq(self) -> int:
        return (self.history[-1]["seq"] + 1) if self.history else 1


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@contextlib.contextmanager
def promotion_lock(home: str, model: str, timeout_s: float = 900.0) -> Iterator[None]:
    """Exclusive per-model lock: flock on $LOOPLINE_HOME/locks/promote-<model>.lock.

    flock belongs to the open file description, so two threads of one process exclude each other as well as
    two processes; the kernel drops it when a holder dies, so a crash never leaves a stale lock."""
    folder = Path(home) / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"promote-{re.sub(r'[^A-Za-z0-9_.-]', '_', model)}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LooplineError(
                        f"another promotion of model {model!r} held {path} for more than {timeout_s:.0f} s"
                    ) from None
                time.sleep(LOCK_POLL_SECONDS)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def retry_locked(fn, *args, **kwargs):
    """Call an MLflow client method, retrying SQLite's transient `database is locked`."""
    delay = 0.05
    for attempt in range(SQLITE_RETRIES):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if "database is locked" not in str(exc) or attempt == SQLITE_RETRIES - 1:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
    raise AssertionError("unreachable")


def registry_writes(client):
    """Where a decision writes aliases and tags of a registered model it has read through `read_state`:
    MLflow's registry client behind `client`. MlflowClient re-reads the whole registered model (every history
    tag) before each write, only to refuse a prompt; that is ~6 of a write's ~8 ms on SQLite, and a move
    writes three times. `read_state` reads the model with `MlflowClient.get_registered_model`, which refuses
    a prompt already, so every writer here runs after that check: under the model's lock, in the same
    decision."""
    registry = getattr(client, "_get_registry_client", None)
    return registry() if callable(registry) else client


def get_alias(client, model: str, alias: str) -> int | None:
    return retry_locked(alias_version, client, model, alias)


def _registered_model(client, model: str):
    from mlflow.exceptions import MlflowException

    try:
        return retry_locked(client.get_registered_model, model)
    except MlflowException as exc:
        raise ModelError(f"model {model!r} is not registered") from exc


def read_history(client, model: str) -> list[dict[str, Any]]:
    """History entries of a registered model, oldest first."""
    return _history_of(_registered_model(client, model))


def _history_of(rm) -> list[dict[str, Any]]:
    entries = []
    for key, value in (rm.tags or {}).items():
        if key.startswith(HISTORY_PREFIX):
            try:
                entries.append(json.loads(value))
            except ValueError:
                continue  # a hand-written tag: not ours
    return sorted(entries, key=lambda e: e.get("seq", 0))


def promotion_history(model: str, *, tracking_uri: str | None = None) -> list[dict[str, Any]]:
    """Every recorded move of `@champion`, oldest first."""
    return read_history(registry_client(tracking_uri or tracking_uri_for(None, None)), model)


def replay(history: list[dict[str, Any]]) -> list[int]:
    """The chain of champions from the moves alone: rollback pops; promote/reconcile push (a version already
    in the chain moves to the top rather than appearing twice)."""
    stack: list[int] = []
    for entry in history:
        if entry["action"] == "rollback":
            stack = stack[:-1]
        else:
            champion = int(entry["champion"])
            stack = [*[v for v in stack if v != champion], champion][-STACK_LIMIT:]
    return stack


def read_state(client, model: str) -> ChampionState:
    """Aliases and history from one read of the registered model (one round trip, one snapshot)."""
    rm = _registered_model(client, model)
    history = _history_of(rm)
    stack = list(history[-1]["stack"]) if history else []
    champion, previous = _aliases_of(rm)
    return ChampionState(champion, previous, stack, history)


def read_aliases(client, model: str) -> tuple[int | None, int | None]:
    """(@champion, @previous) in one round trip."""
    return _aliases_of(_registered_model(client, model))


def _aliases_of(rm) -> tuple[int | None, int | None]:
    aliases = rm.aliases or {}
    champion, previous = aliases.get(CHAMPION), aliases.get(PREVIOUS)
    return (
        None if champion is None else int(champion),
        None if previous is None else int(previous),
    )


def reconcile(client, model: str, state: ChampionState) -> ChampionState:
    """When `@champion` was moved without loopline (by hand, or a move interrupted before its record),
    record what is there, so the history stays the truth about what served."""
    top = state.stack[-1] if state.stack else None
    if state.champion is None:
        # the alias was deleted by hand: nothing serves; the recorded chain is kept for a later rollback
        return state
    if state.champion == top:
        # a move killed between its two alias writes left @previous behind the recorded chain
        expected_previous = state.stack[-2] if len(state.stack) > 1 else None
        if state.previous != expected_previous:
            _set_previous(client, model, expected_previous, state.previous)
            return ChampionState(state.champion, expected_previous, state.stack, state.history)
        return state
    stack = [v for v in state.stack if v != state.champion] + [state.champion]
    entry = {
        "seq": state.next_seq,
        "action": "reconcile",
        "time": now_iso(),
        "champion": state.champion,
        "previous": stack[-2] if len(stack) > 1 else None,
        "from": top,
        "reason": f"@champion pointed at version {state.champion} without a recorded move",
        "stack": stack[-STACK_LIMIT:],
    }
    _set_previous(client, model, entry["previous"], state.previous)
    write_entry(client, model, entry)
    return ChampionState(state.champion, entry["previous"], entry["stack"], [*state.history, entry])


def _set_previous(client, model: str, previous: int | None, current: int | None) -> None:
    """Point `@previous` at `previous` (delete it for None) unless it is there already. After `read_state`."""
    writes = registry_writes(client)
    if previous is not None and previous != current:
        retry_locked(writes.set_registered_model_alias, model, PREVIOUS, str(previous))
    elif previous is None and current is not None:
        retry_locked(writes.delete_registered_model_alias, model, PREVIOUS)


def write_entry(client, model: str, entry: dict[str, Any]) -> None:
    """One history entry, as a registered-model tag. After `read_state` (see `registry_writes`)."""
    retry_locked(
        registry_writes(client).set_registered_model_tag,
        model,
        f"{HISTORY_PREFIX}{entry['seq']:06d}",
        json.dumps(entry, default=str),
    )


def move_champion(
    client,
    model: str,
    version: int,
    *,
    expected: int | None,
    action: str,
    reason: str,
    metrics: dict[str, Any] | None = None,
    pop: bool = False,
) -> dict[str, Any]:
    """Check-and-set: move `@champion` to `version` only if it still points at `expected`. Call under
    `promotion_lock`. `pop` (a rollback) drops the top of the chain instead of pushing. Returns the entry."""
    state = reconcile(client, model, read_state(client, model))
    if state.champion != expected:
        raise PromotionConflict(
            f"@champion of {model!r} moved from {expected} to {state.champion} while deciding; decide again"
        )
    stack = state.stack[:-1] if pop else [*[v for v in state.stack if v != version], version]
    stack = stack[-STACK_LIMIT:]
    previous = stack[-2] if len(stack) > 1 else None
    entry = {
        "seq": state.next_seq,
        "action": action,
        "time": now_iso(),
        "champion": version,
        "previous": previous,
        "from": state.champion,
        "reason": reason,
        "metrics": metrics or {},
        "stack": stack,
    }
    # aliases first, then the record: an interruption in between is found and recorded by `reconcile`
    kill_point("champion.before_alias")
    retry_locked(registry_writes(client).set_registered_model_alias, model, CHAMPION, str(version))
    kill_point("champion.after_alias")  # @champion moved; @previous and the record not yet
    _set_previous(client, model, previous, state.previous)
    kill_point("champion.before_history")
    write_entry(client, model, entry)
    kill_point("champion.after_history")
    after = get_alias(client, model, CHAMPION)
    if after != version:  # someone outside the lock moved it in the last milliseconds
        raise PromotionConflict(f"@champion of {model!r} is {after} right after moving it to {version}")
    return entry


def tag_version(client, model: str, version: int, tags: dict[str, Any], *, state_read: bool = False) -> None:
    """Tags on a version. `state_read`: the caller's decision has read the model through `read_state`, so
    the writes skip MLflow's prompt check (see `registry_writes`)."""
    writes = registry_writes(client) if state_read else client
    for key, value in tags.items():
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        retry_locked(writes.set_model_version_tag, model, str(version), key, text[:90_000])
