"""Task of the maintenance flow: compact, expire and vacuum the lake's Delta tables
(loopline/storage/maintenance.py), and the versions of clean/D and features/D that MLflow runs recorded."""

from __future__ import annotations

from typing import Any

from prefect import task

from loopline.config import LifecycleConfig
from loopline.storage import maintenance as core
from tasks.common import lake_for, retry_unless_user_error, run_logger, slug

# the tags a training run records the Delta versions it read in (loopline/train/run.py)
PINNED_TAGS = {"clean": "data.clean_version", "features": "data.features_version"}
DATASET_TAG = "loopline.dataset"


# the lake or MLflow may hiccup; every step is idempotent (an expired row is gone, a compacted table stays so)
@task(name="maintain-lake", retries=1, retry_delay_seconds=[30], retry_condition_fn=retry_unless_user_error)
def maintain_lake(
    cfg: LifecycleConfig, dataset: str | None = None, model: str | None = None, dry_run: bool = False
) -> dict[str, Any]:
    log = run_logger()
    # the versions a vacuum of clean/features must keep; unreadable MLflow fails the task: no guessing
    keep = recorded_versions(cfg) if cfg.lake.vacuum_pinned_tables else None
    result = core.maintain_lake(
        lake_for(cfg), cfg.lake, dataset=dataset, model=model, dry_run=dry_run, keep_versions=keep
    )
    for t in result["tables"]:
        log.info(
            "%s: v%s -> v%s, files %d -> %d, %d row(s) expired, %d file(s) / %d bytes vacuumed%s",
            t["table"],
            t["version_before"],
            t["version_after"],
            t["files_before"],
            t["files_after"],
            t["rows_deleted"],
            t["files_vacuumed"],
            t["bytes_vacuumed"],
            f"; FAILED: {t['error']}" if t["error"] else "",
        )
    _report(result)
    return result


def recorded_versions(cfg: LifecycleConfig) -> dict[str, list[int]]:
    """{"clean/D": [versions], "features/D": [...]} that any MLflow run (deleted ones too: their registered
    versions may still be served) recorded."""
    from mlflow.entities import ViewType

    from loopline.packaging.registry import registry_client, tracking_uri_for

    client = registry_client(tracking_uri_for(cfg, None))
    experiments = _all_pages(
        lambda token: client.search_experiments(view_type=ViewType.ALL, page_token=token)
    )
    ids = [e.experiment_id for e in experiments]

    def runs_page(token):
        return client.search_runs(ids, run_view_type=ViewType.ALL, page_token=token)

    found: dict[str, set[int]] = {}
    for run in _all_pages(runs_page) if ids else []:
        tags = run.data.tags
        for kind, tag in PINNED_TAGS.items():
            if tags.get(DATASET_TAG) and str(tags.get(tag) or "").isdigit():
                found.setdefault(f"{kind}/{tags[DATASET_TAG]}", set()).add(int(tags[tag]))
    return {table: sorted(versions) for table, versions in found.items()}


def _all_pages(search) -> list:
    """Every item of an MLflow paged search (`search(page_token)` returns a PagedList)."""
    items, token = [], None
    while True:
        page = search(token)
        items += list(page)
        token = page.token
        if not token:
            return items


def _report(result: dict[str, Any]) -> None:
    from prefect.artifacts import create_table_artifact

    columns = ("table", "version_before", "version_after", "files_before", "files_after", "rows_deleted")
    columns += ("files_vacuumed", "bytes_vacuumed", "error")
    create_table_artifact(
        key=slug("lake-maintenance"),
        table=[{c: t[c] for c in columns} for t in result["tables"]],
        description=f"lake {result['lake']}: {result['rows_deleted']} expired row(s), "
        f"{result['bytes_vacuumed']} bytes vacuumed" + (" (dry run)" if result["dry_run"] else ""),
    )
