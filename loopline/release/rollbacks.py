"""Rollback: `@champion` back to the previous champion, `@previous` to the one before, repeatable down the
recorded chain (loopline.release.champion). The hook serving and drift call for an automatic rollback."""

from __future__ import annotations

import time
from typing import Any

from loopline.config import default_home
from loopline.errors import ModelError
from loopline.packaging.registry import registry_client, tracking_uri_for
from loopline.release.champion import move_champion, promotion_lock, read_state, reconcile, tag_version


def rollback(
    model: str,
    *,
    tracking_uri: str | None = None,
    reason: str = "manual",
    home: str | None = None,
    lock_timeout_s: float = 900.0,
) -> dict[str, Any]:
    """Move `@champion` back to the previous champion; `@previous` to the one before (repeatable).

    The hook serving and drift call for an automatic rollback. ModelError when there is nothing to go back to."""
    home = home or default_home()
    tracking_uri = tracking_uri or tracking_uri_for(None, None)
    client = registry_client(tracking_uri)
    started = time.perf_counter()
    with promotion_lock(home, model, lock_timeout_s):
        state = reconcile(client, model, read_state(client, model))
        if state.champion is None:
            raise ModelError(f"model {model!r} has no @champion to roll back")
        if len(state.stack) < 2:
            raise ModelError(
                f"model {model!r} has no previous champion to roll back to (v{state.champion} is the first)"
            )
        target = state.stack[-2]
        entry = move_champion(
            client, model, target, expected=state.champion, action="rollback", reason=reason, pop=True
        )
        tag_version(
            client,
            model,
            state.champion,
            {"loopline.rolled_back_at": entry["time"], "loopline.rolled_back_reason": reason},
        )
    return {
        "model": model,
        "champion_version": entry["champion"],
        "previous_version": entry["previous"],
        "rolled_back_version": state.champion,
        "reason": reason,
        "history_seq": entry["seq"],
        "seconds": round(time.perf_counter() - started, 4),
    }
