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
from tasks.common import code_hash, lake_for, retry_unless_user_error, run_logger
from tasks.locks import lake_slot


def _features_cache_key(context, parameters) -> str | None:
    """Cached on what the output depends on (never on frames or clients): the lake's latest contract (a new
    version makes the build refit when the transform follows another one), clean/D's version, the features
    config, refit and the code. None (no caching) when the dataset is unknown: the task itself then says so."""
    cfg: LifecycleConfig = parameters["cfg"]
    from loopline.errors import LooplineError
    from loopline.storage import delta

    lake = lake_for(cfg)
    try:
        contract = resolve_contract(lake, cfg.data)
    except LooplineError:
        return None
    # clean/D's id and version: a lake wiped and refilled at the same path is another table, not a hit
    table = delta.open_table(lake, lake.table_uri("clean", contract.dataset))
    clean_v = None if table is None else [table.metadata().id, table.version()]
    blob = json.dumps(
        [
            lake.root,
            contract.hash,
            clean_v,
            cfg.features.model_dump(mode="json"),
            parameters.get("refit"),
            code_hash(),
        ]
    )
    return "features-" + hashlib.sha256(blob.encode()).hexdigest()[:24]


@task(
    name="build-features",
    cache_key_fn=_features_cache_key,
    persist_result=True,
    retries=2,
    retry_delay_seconds=[5, 15],
    retry_condition_fn=retry_unless_user_error,
)
def build_features(cfg: LifecycleConfig, refit: bool = False) -> dict:
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
        run_logger().warning("features/%s refit on its own: %s", contract.dataset, result["refit_reason"])
    return result
