"""Tasks of the drift flow: find the champion and its reference profile, stream the current window
through it, and report (artifacts, Prometheus gauges, the verdict table, the event).

The current window is one of:
- the serving log: rows of predictions/M the champion scored in the last H hours (with their predictions);
- `--current FILE`: a .csv / .parquet / .jsonl file, local or s3:// (scored by the champion here);
- `batch:ID` or `batch:latest`: an accepted batch of clean/D (scored by the champion here).
It streams chunk by chunk (`DriftAccumulator`), so a large window never sits in memory whole.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from prefect import task

from loopline.config import LifecycleConfig
from loopline.errors import DriftError, ModelError
from loopline.monitoring.verdicts import record_drift_verdict
from tasks.common import emit, lake_for, retry_unless_user_error, run_logger, slug

PROFILE_FILE = "reference_profile.json"
PREDICTION_COLUMN = (
    "_prediction"  # loopline.serving.inference_log.PREDICTION (not imported: it imports pyarrow IPC)
)
WINDOW_CHUNK_ROWS = 250_000


def tracking_uri(cfg: LifecycleConfig) -> str:
    from loopline.packaging.registry import default_tracking_uri

    return default_tracking_uri(cfg.home)


# the registry or artifact store may hiccup; an unknown model will not fix itself
@task(
    name="find-champion", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_unless_user_error
)
def find_champion(cfg: LifecycleConfig, model: str, missing_ok: bool = False) -> dict[str, Any] | None:
    """The champion's version and its bundle directory (downloaded once per version); None when the
    model is registered but has no @champion yet. An unknown model is a ModelError, or None with
    `missing_ok` (the first lifecycle run: an expected state, not a failed task)."""
    from mlflow.exceptions import MlflowException

    from loopline.packaging.registry import CHAMPION
    from loopline.serving.registry_source import RegistrySource
    from loopline.storage.names import check_name

    check_name(model, "model")  # it names predictions/M, drift/M and the model cache folder
    source = RegistrySource(tracking_uri(cfg), Path(cfg.home) / "cache" / "models")
    try:
        source.client.get_registered_model(model)
    except MlflowException as exc:
        if missing_ok:
            return None
        raise ModelError(
            f"model {model!r} is not in the registry at {source.tracking_uri}; train it first"
        ) from exc
    version = source.resolve(model, CHAMPION)
    if version is None:
        return None
    bundle = source.download(model, version)
    if not (bundle / PROFILE_FILE).is_file():
        raise DriftError(
            f"model {model!r} v{version} has no reference profile ({PROFILE_FILE} in its bundle): retrain it"
        )
    dataset = (yaml.safe_load((bundle / "contract.yaml").read_text()) or {}).get("dataset")
    return {"model": model, "version": version, "bundle_dir": str(bundle), "dataset": dataset}


@task(name="list-champions", retries=2, retry_delay_seconds=[2, 10])
def list_champions(cfg: LifecycleConfig) -> list[str]:
    """Every registered model that has a @champion (what the drift-watch deployment checks)."""
    from loopline.packaging.registry import CHAMPION, registry_client

    client = registry_client(tracking_uri(cfg))
    return sorted(m.name for m in client.search_registered_models() if CHAMPION in (m.aliases or {}))


@task(name="detect-drift")
def detect_window(
    cfg: LifecycleConfig, champion: dict[str, Any], current: str | None, window_hours: float
) -> dict[str, Any]:
    """Stream the current window through the champion's reference profile. Returns the report and the window."""
    from loopline.monitoring import DriftAccumulator, load_profile

    profile = load_profile(Path(champion["bundle_dir"]) / PROFILE_FILE)
    columns = [*profile["numeric"], *profile["categorical"]]
    accumulator = DriftAccumulator(profile)
    window, chunks = _window(cfg, champion, current, window_hours, columns)
    scorer = (
        _Scorer(champion["bundle_dir"]) if window["needs_scoring"] and profile.get("prediction") else None
    )
    for frame, predictions in chunks:
        if scorer is not None:
            predictions = scorer.predict(frame)
        accumulator.update(frame, predictions)
    window["rows"] = accumulator.n_current
    if scorer is not None and scorer.error:
        window["prediction_skipped"] = scorer.error
    if accumulator.n_current == 0:
        return {"report": None, "window": window}
    report = accumulator.finish(cfg.drift)
    log = run_logger()
    log.info(
        "drift of %s v%s on %s: %d of %d features drifted (%.0f%%), prediction drift %s -> %s",
        champion["model"], champion["version"], window["description"], report.n_drifted, report.n_features,
        100 * report.drift_share, report.prediction_drift, "DRIFT" if report.drift_detected else "no drift",
    )  # fmt: skip
    return {"report": report.to_dict(), "window": window}


@task(name="report-drift", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_unless_user_error)
def report_drift(
    cfg: LifecycleConfig, champion: dict[str, Any], report: dict[str, Any], window: dict[str, Any]
) -> bool:
    """Markdown + table artifacts, Prometheus gauges, a row in the lake's drift/M table, and the event
    `loopline.drift.detected` when drift was detected. Returns whether the Prefect API accepted the event
    (False when there was none to send, or it was refused or unreachable: logged, the check still counts).
    (`loopline.monitoring.verdicts.last_drift_verdict` reads the table back for `loopline status`.)"""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from loopline.monitoring import DriftReport, drift_metrics_text, render_drift_markdown

    model, version = champion["model"], champion["version"]
    parsed = DriftReport.from_dict(report)
    key = "drift-" + slug(model)
    markdown = render_drift_markdown(parsed, model=f"{model} v{version}")
    create_markdown_artifact(
        key=key, markdown=f"{markdown}\n\nWindow: {window['description']}", description=f"drift of {model}"
    )
    create_table_artifact(
        key=f"{key}-features",
        table=[
            {"feature": name, **{k: r.get(k) for k in ("method", "score", "threshold", "drift")}}
            for name, r in report["features"].items()
        ],
        description=f"per-feature drift of {model} v{version}",
    )
    write_metrics(cfg, model, drift_metrics_text(parsed, model))
    emitted = False
    if parsed.drift_detected:
        payload = {
            "model": model,
            "model_version": version,
            "drift_share": parsed.drift_share,
            "features": parsed.drifted_features,
            "prediction_drift": parsed.prediction_drift,
            "window": _public_window(window),
        }
        emitted = emit("loopline.drift.detected", f"loopline.model.{model}", payload)
    # the verdict row records whether the event went out, so it follows the emit; the event announces
    # the detection (the report above), not this row
    record_drift_verdict(lake_for(cfg), model, version, report, _public_window(window), emitted)
    return emitted


def write_metrics(cfg: LifecycleConfig, model: str, text: str) -> Path:
    """$LOOPLINE_HOME/metrics/drift_M.prom (atomic replace), served by `python -m loopline.monitoring.exporter`
    or node_exporter's textfile collector, and the Pushgateway group job="drift", model=M when
    LOOPLINE_PUSHGATEWAY_URL is set (loopline.monitoring.publish; a failure there is logged, not raised)."""
    from loopline.monitoring.publish import publish
    from loopline.storage.names import check_name

    return publish(cfg.home, "drift", text, {"model": check_name(model, "model")})


# -- the current window ----------------------------------------------------------------------------------


def _window(
    cfg: LifecycleConfig,
    champion: dict[str, Any],
    current: str | None,
    window_hours: float,
    columns: list[str],
) -> tuple[dict[str, Any], Iterator[tuple[pd.DataFrame, np.ndarray | None]]]:
    if current is None:
        return _serving_window(cfg, champion, window_hours, columns)
    if current.startswith("batch:"):
        return _batch_window(cfg, champion["dataset"], current.removeprefix("batch:"), columns)
    return _file_window(cfg, current, columns)


def _serving_window(cfg, champion, window_hours: float, columns: list[str]):
    """predictions/M rows the champion version scored in the last `window_hours`."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from loopline.storage import delta

    lake = lake_for(cfg)
    end = datetime.now(UTC)
    start = end - timedelta(hours=window_hours)
    window = {
        "kind": "predictions",
        "start": start.isoformat(),
        "end": end.isoformat(),
        "hours": window_hours,
        "needs_scoring": False,
        "description": f"predictions/{champion['model']} of v{champion['version']}, last {window_hours:g} h",
    }
    table = delta.open_table(lake, lake.table_uri("predictions", champion["model"]))
    if table is None:
        return window, iter(())
    dataset = delta.dataset(table)
    expr = (
        (pc.field("_scored_at") >= pa.scalar(start, type=pa.timestamp("us", tz="UTC")))
        & (pc.field("_model_version") == str(champion["version"]))
        & (pc.field("_role") == "champion")
    )
    wanted = [c for c in [*columns, PREDICTION_COLUMN] if c in dataset.schema.names]

    def chunks():
        for batch in dataset.to_batches(columns=wanted, filter=expr, batch_size=WINDOW_CHUNK_ROWS):
            if batch.num_rows:
                frame = batch.to_pandas()
                yield frame, frame.pop(PREDICTION_COLUMN).to_numpy() if PREDICTION_COLUMN in frame else None

    return window, chunks()


def _batch_window(cfg, dataset_name: str, batch_id: str, columns: list[str]):
    """An accepted batch of clean/D (`latest`: the newest accepted one in the batch ledger)."""
    import pyarrow.compute as pc

    from loopline.storage import delta

    lake = lake_for(cfg)
    if batch_id == "latest":
        ledger = delta.read_column(
            lake, lake.uri("batches", dataset_name), ["batch_id", "status", "ingested_at"]
        )
        accepted = [
            r for r in (ledger.to_pylist() if ledger is not None else []) if r["status"] == "accepted"
        ]
        if not accepted:
            raise DriftError(f"dataset {dataset_name!r} has no accepted batch yet: nothing to compare")
        batch_id = max(accepted, key=lambda r: r["ingested_at"])["batch_id"]
    table = delta.open_table(lake, lake.table_uri("clean", dataset_name))
    if table is None:
        raise DriftError(f"clean/{dataset_name} does not exist: ingest a batch first")
    dataset = delta.dataset(table)  # every column: the champion scores the batch
    window = {
        "kind": "batch",
        "batch_id": batch_id,
        "needs_scoring": True,
        "description": f"batch {batch_id} of clean/{dataset_name}",
    }

    def chunks():
        for batch in dataset.to_batches(
            filter=pc.field("_batch_id") == batch_id, batch_size=WINDOW_CHUNK_ROWS
        ):
            if batch.num_rows:
                yield batch.to_pandas(), None

    return window, chunks()


def _file_window(cfg, uri: str, columns: list[str]):
    """A data file, read in chunks with its own types (CSV: pandas' inference)."""
    import shutil

    from loopline.storage import sources

    workdir = sources.scratch_dir()
    src = sources.fetch(uri, lake_for(cfg), workdir)
    if not Path(src.local_path).is_file():
        raise DriftError(f"--current {uri}: no such file")
    window = {"kind": "file", "file": src.uri, "needs_scoring": True, "description": f"file {src.uri}"}

    def chunks():
        try:
            for frame in _read_file_chunks(src.local_path, src.fmt):
                if len(frame):
                    yield frame, None
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    return window, chunks()


def _read_file_chunks(path: str, fmt: str) -> Iterator[pd.DataFrame]:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=WINDOW_CHUNK_ROWS):
            yield batch.to_pandas()
    elif fmt == "csv":
        yield from pd.read_csv(path, chunksize=WINDOW_CHUNK_ROWS)
    else:
        yield from pd.read_json(path, lines=True, chunksize=WINDOW_CHUNK_ROWS)


class _Scorer:
    """The champion's predictions for windows that do not carry them (a file, a clean batch)."""

    def __init__(self, bundle_dir: str):
        self.bundle_dir = bundle_dir
        self.predictor = None
        self.error: str | None = None

    def predict(self, frame: pd.DataFrame) -> np.ndarray | None:
        if self.error:
            return None
        try:
            if self.predictor is None:
                from loopline.packaging.bundle import load_predictor

                self.predictor = load_predictor(self.bundle_dir)
            return self.predictor.predict(frame)
        except Exception as exc:  # features still drift-check without predictions; say why
            self.error = f"the champion could not score the window ({type(exc).__name__}: {exc})"
            run_logger().warning("prediction drift skipped: %s", self.error)
            return None


def _public_window(window: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in window.items() if k != "needs_scoring"}
