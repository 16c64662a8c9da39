"""Rollback: `@champion` back to the previous champion, `@previous` to the one before, repeatable down the
recorded chain (loopline.release.champion). The hook serving and drift call for an automatic rollback."""

from __future__ import annotations

import time
from typing import Any

from loopline.config import default_home
from loopline.errors import ModelError
from loopline.packaging.registry import registry_client, tracking_uri_for, version_info
from loopline.release.champion import move_champion, promotion_lock, read_state, reconcile, tag_version
from loopline.storage.lake import Lake


def rollback(
    model: str,
    *,
    tracking_uri: str | None = None,
    reason: str = "manual",
    home: str | None = None,
    lock_timeout_s: float = 900.0,
    lake: Lake | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Move `@champion` back to the previous champion; `@previous` to the one before (repeatable).

    The hook serving and drift call for an automatic rollback. ModelError when there is nothing to go back to,
    or (given the `lake`, unless `force`) when the previous champion was trained on a contract the dataset's
    current one changed incompatibly: it would refuse the requests and data of today's format."""
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
        if lake is not None and not force:
            _check_can_score(client, lake, model, target)
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


def _check_can_score(client, lake: Lake, model: str, version: int) -> None:
    """ModelError when `version`'s contract (its training run's tag) differs incompatibly from the latest
    contract of its dataset in the lake: a removed or retyped column, a new required one, ..."""
    from loopline.data.contract_registry import contract_versions, diff_contracts

    info = version_info(client, model, version)
    if not info["dataset"] or not info["contract_hash"]:
        return  # a version from before training tagged them: nothing to compare
    versions = contract_versions(lake, info["dataset"])
    if not versions or versions[-1].hash == info["contract_hash"]:
        return
    trained = [v for v in versions if v.hash == info["contract_hash"]]
    if not trained:
        return  # trained on a contract this lake never registered (another lake): nothing to compare
    breaking = [
        c.what for c in diff_contracts(trained[-1].contract, versions[-1].contract) if not c.compatible
    ]
    if breaking:
        raise ModelError(
            f"not rolling back {model!r} to v{version}: it was trained on contract version "
            f"{trained[-1].version} of dataset {info['dataset']!r}, and the current version "
            f"{versions[-1].version} changed it incompatibly ({'; '.join(breaking)}), so v{version} would "
            "refuse requests and data in today's format. Train and promote a model on the current data, or "
            "roll back anyway with --force."
        )
