"""Tasks of the features stage: bring features/D up to date with clean/D, cached on what it depends on. The
build holds its dataset's lake slot (`lake-<dataset>`, tasks/locks.py): the features trigger, the retrain
new-data trigger and the lifecycle's own call queue instead of racing (the core is safe either way)."""

from __future__ import annotations

import hashlib
import json

from prefect import task

from loopline import features as core_features
from loopline.config import LifecycleConfig
from loopline.data.contract_registry import resolve_contract
from tasks import stage_cache
from tasks.common import lake_for, retry_unless_user_error, run_logger
from tasks.locks import lake_slot


def _features_cache_key(context, parameters) -> str | None:
    """Cached on what the output depends on (never on frames or clients): the lake's latest contract (a new
    version makes the build refit when the transform follows another one), the features config, refit, the
    code, and the state of clean/D and features/D (ids and versions, from their logs).

    The state a build leaves features/D in is not the one its key saw, so each build also leaves a stage
    record (tasks/stage_cache.py): the key it ran under and the tables' state after it. A call that finds
    the tables as that build left them gets that key again (Prefect's cached result, Cached in the UI);
    any other state is a new key. Keyed on clean/D alone, a build after a refit returned the result cached
    before the refit (its transform and features version, which training then pinned) although the table
    held the refit's. None (no caching) when the dataset is unknown: the task itself then says so."""
    found = _record(parameters["cfg"], parameters.get("refit"))
    if found is None:
        return None
    record, state = found
    hit = stage_cache.load(parameters["cfg"], record, state)
    if hit is not None and hit.get("prefect_key"):
        return hit["prefect_key"]
    blob = json.dumps([record, state])
    return "features-" + hashlib.sha256(blob.encode()).hexdigest()[:24]


def _record(cfg: LifecycleConfig, refit: bool | None) -> tuple[str, list | None] | None:
    """(the stage record's key: the build's inputs, the state of clean/D and features/D now)."""
    from loopline.errors import LooplineError

    lake = lake_for(cfg)
    try:
        contract = resolve_contract(lake, cfg.data)
    except LooplineError:
        return None
    record = stage_cache.key_of(
        "features", lake.root, contract.hash, cfg.features.model_dump(mode="json"), refit
    )
    uris = [lake.table_uri(kind, contract.dataset) for kind in ("clean", "features")]
    return record, stage_cache.table_states(lake, uris)


@task(
    name="build-features",
    cache_key_fn=_features_cache_key,
    persist_result=True,
    retries=2,
    retry_delay_seconds=[5, 15],
    retry_condition_fn=retry_unless_user_error,
)
def build_features(cfg: LifecycleConfig, refit: bool = False) -> dict:
    key = _features_cache_key(None, {"cfg": cfg, "refit": refit})  # the key this run's result is kept under
    lake = lake_for(cfg)
    contract = resolve_contract(lake, cfg.data)  # the lake's latest version of the dataset's contract
    with lake_slot(contract.dataset, cfg.data.lake_slot_timeout_seconds):
        result = core_features.build_features(lake, contract, cfg.features, refit=refit)
    run_logger().info(
        "features/%s v%s: %d new batch(es), %d rows, transform %s",
        contract.dataset,
        result["features_version"],
        result["new_batches"],
        result["rows_added"],
        result["transform_version"],
    )
    if result.get("refit_reason") not in (None, "requested"):
        run_logger().info("features/%s refit on its own: %s", contract.dataset, result["refit_reason"])
    after = _record(cfg, refit)
    if key is not None and after is not None:  # a call finding the tables as this build left them: its key
        stage_cache.save(cfg, *after, {"prefect_key": key})
    return result
