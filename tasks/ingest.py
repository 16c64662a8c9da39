"""Tasks of the ingest stage: the demo source, a source's files, and one file through the gate as one batch
(its own task: retries, artifacts and the data event per batch). A batch holds its dataset's lake slot
(`lake-<dataset>`, tasks/locks.py) while it writes: one writer of a dataset's tables at a time."""

from __future__ import annotations

import json

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from loopline.config import LifecycleConfig
from loopline.data import ingest as core_ingest
from loopline.data.contract_registry import ingest_contract
from loopline.data.synthetic import generate_source, next_batch
from loopline.monitoring.data_metrics import publish_ingest_metrics
from loopline.storage import sources
from tasks import stage_cache
from tasks.common import emit, lake_for, retry_unless_user_error, run_logger
from tasks.locks import lake_slot
from tasks.progress import report as report_progress

# A rejection fails the run with a DataQualityError that the CLI prints itself: its console shows this
# record once, as that paragraph (flows/console.py USER_ERROR_MARK); the Prefect API keeps the warning.
CLI_REPORTS = {"loopline_user_error": True}


@task(name="synthesise-demo-source")
def synthesise_source(cfg: LifecycleConfig) -> str:
    """The seeded demo batch, written once under $LOOPLINE_HOME/landing (same knobs, same file). An unset
    seed or id_offset makes a fresh batch: the next id range and a new seed, stated in an artifact."""
    from pathlib import Path

    synthetic = next_batch(cfg.synthetic, lake_for(cfg))
    path = generate_source(synthetic, Path(cfg.home) / "landing")
    first, last = synthetic.id_offset, synthetic.id_offset + synthetic.rows - 1
    create_markdown_artifact(
        key="demo-source",
        markdown=(
            f"# Synthetic demo batch\n\n{synthetic.rows} rows, customer_id {first}..{last}, seed {synthetic.seed}"
            f" ({'set in the config' if cfg.synthetic.seed is not None else 'one per batch'}), "
            f"bad_fraction {synthetic.bad_fraction:g}, drifted columns {synthetic.drift_columns or 'none'}."
            f"\n\nFile: `{path}`"
        ),
        description="the synthetic batch this run ingests",
    )
    run_logger().info("demo batch: %d rows, ids %d..%d, seed %d", synthetic.rows, first, last, synthetic.seed)
    return str(path)


# S3 listing may hiccup; a missing path will not fix itself
@task(
    name="list-source-files",
    retries=3,
    retry_delay_seconds=[2, 5, 15],
    retry_condition_fn=retry_unless_user_error,
)
def list_source_files(source: str, cfg: LifecycleConfig) -> list[str]:
    files = sources.list_source(source, lake_for(cfg))
    report_progress("ingest.files", files=len(files))
    return files


# idempotent: a retry resumes the batch where the crash left it (Delta app transactions)
@task(name="ingest-batch", retries=2, retry_delay_seconds=[5, 15], retry_condition_fn=retry_unless_user_error)
def ingest_batch(uri: str, cfg: LifecycleConfig, in_folder: bool = False) -> dict:
    """One file as one batch. In a folder, an unreadable file is reported as that file's rejection.
    An unchanged file that this lake took in, with the lake untouched since, is a hit of its stage record
    (tasks/stage_cache.py): the duplicate it would be, decided from file and table metadata alone."""
    lake = lake_for(cfg)
    key = _record_key(uri, cfg, lake, in_folder)
    if key and (hit := stage_cache.load(cfg, key, _lake_state(cfg, lake))) is not None:
        report_progress("ingest.batch", source=uri, state="done", **{k: hit[k] for k in _COUNTS})
        return hit  # no `cached` key: callers rebuild BatchResult from these dicts (summarise_dicts)
    report_progress("ingest.batch", source=uri, state="start")
    contract = ingest_contract(lake, cfg.data)
    with lake_slot(contract.dataset, cfg.data.lake_slot_timeout_seconds):
        result = core_ingest.ingest_file(uri, contract, lake, cfg, in_folder=in_folder)
    publish_ingest_metrics(lake, cfg, contract)  # the ledger's counts for Prometheus; never fails the batch
    emitted = report_batch(result)
    report_progress("ingest.batch", source=uri, state="done", **_counts(result))
    if key and result.batch_id and result.accepted:  # a rerun of this file finds this batch: a duplicate
        again = {**result.as_dict(), "duplicate_batch": True, "event_emitted": False}
        stage_cache.save(cfg, key, _lake_state(cfg, lake), again)
    return {**result.as_dict(), "event_emitted": emitted}


_COUNTS = ("rows_in", "rows_clean", "rows_quarantined", "accepted", "duplicate_batch")


def _record_key(uri: str, cfg: LifecycleConfig, lake, in_folder: bool) -> str | None:
    """The batch's inputs: the file (path, size, mtime), the contract file, the data settings, the lake."""
    source = stage_cache.file_identity(uri)
    if source is None:
        return None
    contract = stage_cache.file_identity(cfg.data.contract) if cfg.data.contract else None
    data = cfg.data.model_dump(mode="json")
    return stage_cache.key_of("ingest", source, contract, data, lake.root, in_folder)


def _lake_state(cfg: LifecycleConfig, lake) -> list | None:
    """Ids and versions of the dataset's raw, clean and quarantine tables and its ledger."""
    from loopline.data.ledger import ledger_uri
    from loopline.packaging.registry import contract_dataset

    try:
        dataset = contract_dataset(cfg)
        uris = [lake.table_uri(kind, dataset) for kind in ("raw", "clean", "quarantine")]
        return stage_cache.table_states(lake, [*uris, ledger_uri(lake, dataset)])
    except Exception as exc:  # no record rather than a failed batch
        run_logger().debug("no stage record for the batch: %s", exc)
        return None


def _counts(result: core_ingest.BatchResult) -> dict:
    return {k: getattr(result, k) for k in _COUNTS}


def report_batch(result: core_ingest.BatchResult) -> bool:
    """Markdown + table artifacts, a log line, and the data event. Returns whether the API accepted the event
    (False too for a batch ingested before: nothing new, no event)."""
    log = run_logger()
    resource = f"loopline.dataset.{result.dataset}"
    if not result.batch_id:  # unreadable file in a folder: nothing landed
        log.warning("%s", result.reason, extra=CLI_REPORTS)
        return emit(
            "loopline.data.rejected",
            resource,
            {"batch_id": None, "rows": 0, "source": result.source, "reason": result.reason},
        )
    if result.duplicate_batch:
        log.info("batch %s from %s was ingested before: nothing to do", result.batch_id, result.source)
        return False
    key = f"batch-{result.dataset}-{result.batch_id}".lower().replace("_", "-")
    verdict = "accepted" if result.accepted else f"REJECTED: {result.reason}"
    lines = [
        f"# Batch `{result.batch_id}` of `{result.dataset}`: {verdict}",
        "",
        f"Source: `{result.source}`",
        "",
        "| rows in | clean | quarantined |",
        "|---:|---:|---:|",
        f"| {result.rows_in} | {result.rows_clean} | {result.rows_quarantined} |",
        "",
        f"Delta versions: raw {result.raw_version}, clean {result.clean_version}, quarantine {result.quarantine_version}.",
    ]
    if result.data_docs_path:
        lines += ["", f"Data Docs: `{result.data_docs_path}`"]
    failing = [e for e in result.per_expectation if e.get("unexpected_count")]
    if failing:
        lines += [
            "",
            "## Failed expectations",
            "",
            "| expectation | column | bad rows | examples |",
            "|---|---|---:|---|",
        ]
        for e in failing:
            examples = ", ".join(f"`{x}`" for x in (e.get("examples") or [])[:5])
            lines.append(
                f"| {e['expectation']} | {e.get('column') or ''} | {e['unexpected_count']} | {examples} |"
            )
    create_markdown_artifact(
        key=key, markdown="\n".join(lines), description=f"validation of batch {result.batch_id}"
    )
    create_table_artifact(
        key=f"{key}-expectations",
        table=[
            {
                "expectation": e["expectation"],
                "column": e.get("column"),
                "unexpected_count": e.get("unexpected_count", 0),
                "examples": json.dumps((e.get("examples") or [])[:5], default=str),
            }
            for e in result.per_expectation
        ]
        or [{"expectation": "(none)", "column": None, "unexpected_count": 0, "examples": "[]"}],
        description=f"per-expectation counts of batch {result.batch_id}",
    )
    payload = {"batch_id": result.batch_id, "rows": result.rows_clean, "source": result.source}
    if result.accepted:
        log.info(
            "batch %s: %d rows in, %d clean, %d quarantined",
            result.batch_id,
            result.rows_in,
            result.rows_clean,
            result.rows_quarantined,
        )
        return emit(
            "loopline.data.ingested", resource, {**payload, "rows_quarantined": result.rows_quarantined}
        )
    else:
        log.warning("batch %s rejected: %s", result.batch_id, result.reason, extra=CLI_REPORTS)
        return emit(
            "loopline.data.rejected",
            resource,
            {**payload, "rows_in": result.rows_in, "reason": result.reason},
        )
