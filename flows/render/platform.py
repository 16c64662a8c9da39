"""Summaries of `loopline run` (the whole lifecycle), `up`, `down` and `init`."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from rich.console import RenderableType

from flows.render.parts import NONE, heading, num, pairs, signed, table, ver
from loopline.packaging.registry import default_tracking_uri


def _ingest_line(batches: Any) -> str:
    items = batches if isinstance(batches, list) else (batches.get("batches") or [batches])
    # a batch ingested before is no work of this run: its counts are the first ingest's, not shown as new
    new = [b for b in items if not b.get("duplicate_batch")]
    duplicates = len(items) - len(new)
    head = f"{len(items)} batch(es) of {items[0].get('dataset') if items else NONE}: "
    if not new and duplicates:
        return head + "already ingested, nothing new"
    rows = [sum(int(b.get(k) or 0) for b in new) for k in ("rows_in", "rows_clean", "rows_quarantined")]
    text = head + f"{rows[0]:,} rows in, {rows[1]:,} clean, {rows[2]:,} quarantined"
    return text + (f" ({duplicates} already ingested, not counted)" if duplicates else "")


def _unchanged(stage: dict[str, Any], line: str) -> str:
    """A stage result recorded by an earlier run (nothing changed since): said, not passed off as new work."""
    return f"unchanged since the last run (recorded result): {line}" if stage.get("cached") else line


def _drift_line(d: dict[str, Any]) -> str:
    if d.get("skipped"):
        return f"skipped: {d.get('message')}"
    features = d.get("features") or {}
    drifted = d.get("drifted_features") or []
    verdict = "DRIFT" if d.get("drift_detected") else "no drift"
    return (
        f"{verdict} against @champion {ver(d.get('model_version'))}: {len(drifted)} of {len(features)} features"
        + (f" ({', '.join(drifted)})" if drifted else "")
        + f", prediction drift {num(bool(d.get('prediction_drift')))}"
        + ("; loopline.drift.detected emitted" if d.get("event_emitted") else "")
    )


def _features_line(f: dict[str, Any]) -> str:
    return (
        f"features/{f.get('dataset')} {ver(f.get('features_version'))}: {num(f.get('new_batches'))} new batch(es), "
        f"{num(f.get('rows_added'))} rows added"
    )


def _train_line(t: dict[str, Any]) -> str:
    val = t.get("val_metrics") or {}
    preferred = [k for k in ("roc_auc", "r2", "f1", "accuracy") if k in val]
    key = (preferred or [k for k in sorted(val) if "loss" not in k] or [None])[0]
    metric = f"val {key} {num(val[key])}" if key else None
    parts = [f"{t.get('model_name')} {ver(t.get('model_version'))}: {num(t.get('steps'))} steps", metric]
    if t.get("samples_per_s"):
        parts.append(f"{float(t['samples_per_s']):,.0f} samples/s on {t.get('device')}")
    return ", ".join(p for p in parts if p)


def _promote_line(p: dict[str, Any]) -> str:
    cand = ver(p.get("candidate_version"))
    head = (
        f"promoted {cand}"
        if p.get("promoted")
        else f"not promoted {cand} (@champion {ver(p.get('champion_version'))})"
    )
    ci = p.get("ci")
    tail = (
        f"; difference {signed(ci.get('estimate'))} [{signed(ci.get('low'))}, {signed(ci.get('high'))}]"
        if ci
        else ""
    )
    return f"{head}: {p.get('reason')}{tail}"


def _deploy_line(d: dict[str, Any]) -> str:
    servers = d.get("servers") or []
    if not servers:
        return "no model server" + (f" ({d['reason']})" if d.get("reason") else "")
    parts = [
        f"{s.get('url')} serving {ver(s.get('version'))}"
        if s.get("healthy")
        else f"{s.get('url')} FAILED: {s.get('error')}"
        for s in servers
    ]
    if d.get("rolled_back"):
        parts.append(f"rolled back to {ver(d['rolled_back'].get('champion_version'))}")
    return "; ".join(parts)


def render_run(result: dict[str, Any], *, home: str | None = None, **_: Any) -> Iterable[RenderableType]:
    champion = result.get("champion_version")
    yield heading("loopline run finished" + (f": @champion {ver(champion)}" if champion is not None else ""))
    t = table("stage", "result")
    lines: list[tuple[str, Callable[[Any], str]]] = [
        ("ingest", _ingest_line),
        ("drift", _drift_line),
        ("features", _features_line),
        ("train", _train_line),
        ("promote", _promote_line),
        ("deploy", _deploy_line),
    ]
    for stage, line in lines:
        if result.get(stage) is not None:
            value = result[stage]
            t.add_row(stage, _unchanged(value, line(value)) if isinstance(value, dict) else line(value))
    yield t
    root = Path(home or ".").resolve()
    yield "Where to look:"
    yield f"  Delta tables: {root / 'lake'} (raw/, clean/, quarantine/, features/)"
    yield f"  Data Docs:    {root / 'data_docs'}"
    tracking = default_tracking_uri(str(root))  # MLFLOW_TRACKING_URI (a stack's server) or the home's SQLite
    yield (
        f"  MLflow:       {tracking}"
        if tracking.startswith(("http://", "https://"))
        else f"  MLflow:       mlflow ui --backend-store-uri {tracking}"
    )
    for server in (result.get("deploy") or {}).get("servers", []):
        yield f"  Model server: {server.get('url')}/invocations ({ver(server.get('version'))}); `loopline down` stops it"
    api = os.environ.get("PREFECT_API_URL")
    local = (root / "local_api.json").exists() and not (root / "stack.json").exists()
    yield (
        f"  Prefect UI:   {api.removesuffix('/api')}"
        + (" (this home's local API: it stops when idle; `loopline up` for a lasting one)" if local else "")
        if api
        else "  Prefect UI:   start one with `loopline up` (this run used an ephemeral API)"
    )


def render_up(info: dict[str, Any], **_: Any) -> Iterable[RenderableType]:
    yield heading("loopline stack is " + ("already running" if info.get("already_running") else "up"))
    workers = sorted(n for n in (info.get("pids") or {}) if str(n).startswith("worker-"))
    yield pairs(
        [
            ("Prefect UI", info.get("prefect_ui_url")),
            ("Prefect API", info.get("prefect_api_url")),
            ("MLflow UI", info.get("mlflow_ui_url")),
            ("database", info.get("database")),
            ("deployments", ", ".join(info.get("deployments") or []) or NONE),
            ("work pools", ", ".join(map(str, info.get("work_pools") or [])) or None),
            ("workers", ", ".join(workers) or None),
        ]
    )
    yield "Every loopline command in this LOOPLINE_HOME now uses this stack; `loopline down` stops it."


def render_down(result: dict[str, Any], **_: Any) -> Iterable[RenderableType]:
    stopped = result.get("stopped") or []
    servers = result.get("model_servers_stopped") or []
    local_api = result.get("local_api")
    yield heading(
        f"loopline stack stopped ({result.get('home')})"
        if stopped or result.get("already_gone")
        else str(result.get("message") or "nothing was running")
    )
    yield pairs(
        [
            ("stack", ", ".join(stopped) or NONE),
            ("already gone", ", ".join(result.get("already_gone") or []) or None),
            ("model servers", ", ".join(servers) or NONE),
            (
                "local Prefect API",
                ("stopped" if local_api.get("stopped") else local_api.get("message") or NONE)
                if isinstance(local_api, dict)
                else None,
            ),
        ]
    )


def render_init(result: dict[str, Any], *, sample: str | None = None, **_: Any) -> Iterable[RenderableType]:
    sample = sample or result.get("sample")
    yield heading(f"drafted {result.get('out')} from {sample} ({num(result.get('rows'))} rows read)")
    yield pairs(
        [
            ("dataset", result.get("dataset")),
            ("id", f"{result.get('id')} ({result.get('id_reason')})"),
            ("label", result.get("label")),
            ("task", f"{result.get('task')} ({result.get('task_reason')})"),
        ]
    )
    by_type = result.get("columns_by_type") or {}
    t = table("type", "columns", "names", right=("columns",))
    for kind, cols in by_type.items():
        t.add_row(kind, str(len(cols)), ", ".join(cols))
    yield t
    yield f"Read it, edit it, then: loopline ingest --contract {result.get('out')} --source {sample}"
