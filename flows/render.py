"""The human face of each CLI command's result: a short summary, tables drawn with rich.

`show(command, result, **context)` prints it to stdout. `--json` never comes here: its one JSON line is the
machine's face and stays as it is. A renderer reads the same dict the JSON shows, tolerates missing keys
(older results, skipped stages) and never fails the command: on a surprise it prints the dict compactly.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

Renderer = Callable[..., Iterable[RenderableType]]
NONE = "–"


def console(file: Any = None) -> Console:
    """stdout (or `file`); markup and emoji off: names and messages are printed as written."""
    return Console(file=file, markup=False, emoji=False, highlight=False)


def show(command: str, result: Any, *, file: Any = None, **context: Any) -> None:
    out = console(file)
    try:
        items = list(RENDERERS[command](result, **context))
    except Exception as exc:  # a summary must never turn a finished command into a failure
        items = [
            Text(f"({command}: no summary for this result: {type(exc).__name__}: {exc})", style="dim"),
            json.dumps(result, default=str, sort_keys=True),
        ]
    for item in items:
        if isinstance(item, str | Text):
            out.print(item, soft_wrap=True)  # paths and messages stay on one line
        else:
            out.print(item)


# -- small pieces ----------------------------------------------------------------------------------------


def heading(text: str, style: str = "bold") -> Text:
    return Text(text, style=style)


def table(*columns: str, right: Iterable[str] = ()) -> Table:
    """A plain table: a header rule, no outer frame. Columns named in `right` are right-aligned."""
    t = Table(
        box=box.SIMPLE_HEAD, show_edge=False, header_style="bold", pad_edge=False, collapse_padding=True
    )
    right = set(right)
    for name in columns:
        t.add_column(name, justify="right" if name in right else "left", overflow="fold")
    return t


def pairs(rows: Iterable[tuple[str, Any]]) -> Table:
    """A two-column key/value table; rows whose value is None are left out."""
    t = Table(box=box.SIMPLE, show_header=False, show_edge=False, pad_edge=False)
    t.add_column("key", style="bold", no_wrap=True)
    t.add_column("value", overflow="fold")
    for key, value in rows:
        if value is not None:
            t.add_row(key, str(value))
    return t


def num(x: Any) -> str:
    """Counts with thousands separators, metrics with 4 decimals (tiny p-values in e-notation)."""
    if x is None:
        return NONE
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        if x != 0 and abs(x) < 1e-3:
            return f"{x:.2e}"
        return f"{x:,.4f}" if abs(x) < 1e5 else f"{x:,.0f}"
    return str(x)


def signed(x: Any) -> str:
    if not isinstance(x, int | float) or isinstance(x, bool) or math.isnan(x):
        return NONE
    return f"{x:+.4f}"


def ver(v: Any) -> str:
    return NONE if v is None or v == "" else f"v{v}"


def name_of(uri: Any) -> str:
    """The file name of a local path or s3:// URI (a folder keeps its own name)."""
    text = str(uri or "")
    return os.path.basename(text.rstrip("/")) or text or NONE


# -- ingest ----------------------------------------------------------------------------------------------


def batch_status(b: dict[str, Any]) -> str:
    if b.get("duplicate_batch"):
        return "duplicate"
    return "accepted" if b.get("accepted", True) else "rejected"


def render_ingest(result: dict[str, Any], **_: Any) -> Iterable[RenderableType]:
    batches = result.get("batches") or [result]
    rejected = sum(not b.get("accepted", True) for b in batches)
    duplicate = all(b.get("duplicate_batch") for b in batches)
    verdict = "already ingested, nothing new" if duplicate else "accepted"
    if rejected:
        verdict = "REJECTED" if len(batches) == 1 else f"{rejected} of {len(batches)} batches REJECTED"
    sources = result.get("source") or (batches[0].get("source") if len(batches) == 1 else None)
    where = f" from {sources}" if sources else f" from {len(batches)} files"
    yield heading(f"ingest {result.get('dataset')}{where}: {verdict}")
    t = table(
        "source",
        "batch",
        "rows in",
        "clean",
        "quarantined",
        "status",
        right=("rows in", "clean", "quarantined"),
    )
    for b in batches:
        t.add_row(
            name_of(b.get("source")),
            b.get("batch_id") or NONE,
            num(b.get("rows_in")),
            num(b.get("rows_clean")),
            num(b.get("rows_quarantined")),
            batch_status(b),
        )
    if len(batches) > 1:
        t.add_section()
        t.add_row(
            "total",
            f"{len(batches)} batches",
            num(result.get("rows_in")),
            num(result.get("rows_clean")),
            num(result.get("rows_quarantined")),
            "",
        )
    yield t
    yield (
        f"versions: raw {ver(result.get('raw_version'))} · clean {ver(result.get('clean_version'))} · "
        f"quarantine {ver(result.get('quarantine_version'))} · contract {ver(result.get('contract_version'))}"
    )
    docs = [b["data_docs_path"] for b in batches if b.get("data_docs_path")]
    if len(docs) == 1:
        yield f"Data Docs: {docs[0]}"
    elif docs:
        yield f"Data Docs: {os.path.commonpath(docs)} ({len(docs)} validation pages)"


# -- features --------------------------------------------------------------------------------------------


def render_features(result: dict[str, Any], **_: Any) -> Iterable[RenderableType]:
    dataset, version = result.get("dataset"), result.get("features_version")
    nothing_new = not result.get("new_batches") and not result.get("refit")
    state = (
        "up to date, nothing new to build" if nothing_new else f"{num(result.get('rows_added'))} rows added"
    )
    yield heading(f"features/{dataset} {ver(version)}: {state}")
    refit = result.get("refit")
    if refit and result.get("refit_reason"):
        refit = f"yes ({result['refit_reason']})"
    yield pairs(
        [
            ("features", ver(version)),
            ("built from", f"clean/{dataset} {ver(result.get('clean_version'))}"),
            ("new batches", num(result.get("new_batches"))),
            ("rows added", num(result.get("rows_added"))),
            ("transform", result.get("transform_version")),
            ("refit", num(refit) if isinstance(refit, bool) else refit),
        ]
    )


# -- train -----------------------------------------------------------------------------------------------


def _gpu(gpu: Any) -> str | None:
    if not gpu:
        return None
    if isinstance(gpu, dict):
        name = gpu.get("name") or gpu.get("device_name") or ""
        util = gpu.get("utilization_mean") or gpu.get("util_mean")
        return f"{name}" + (f", {num(float(util))} % busy" if isinstance(util, int | float) else "")
    return str(gpu)


def render_train(result: dict[str, Any], **_: Any) -> Iterable[RenderableType]:
    model, version = result.get("model_name"), result.get("model_version")
    yield heading(f"trained {model} {ver(version)} (registered, not promoted)")
    steps = num(result.get("steps"))
    if result.get("resumed_from_step"):
        steps += f" (resumed from step {num(result['resumed_from_step'])})"
    if result.get("stopped_early"):
        steps += " (stopped early)"
    device = " · ".join(
        str(x)
        for x in (result.get("device"), result.get("precision"), f"{result.get('devices') or 1} device(s)")
        if x
    )
    rows: list[tuple[str, Any]] = [
        ("model", f"{model} {ver(version)}  {result.get('model_uri') or ''}".rstrip()),
        ("steps", steps),
        ("device", device),
        ("gpu", _gpu(result.get("gpu"))),
        (
            "throughput",
            f"{float(result['samples_per_s']):,.0f} samples/s" if result.get("samples_per_s") else None,
        ),
        (
            "data",
            f"features {ver(result.get('features_version'))} · clean {ver(result.get('clean_version'))}",
        ),
    ]
    for name, value in sorted((result.get("val_metrics") or {}).items()):
        rows.append((f"val {name.removeprefix('val_')}", num(value)))
    rows += [
        ("MLflow run", result.get("run_id")),
        ("state", (result.get("state_sha256") or "")[:12] or None),
    ]
    yield pairs(rows)
    yield f"next: loopline promote --model {model}"


# -- evaluate / promote / rollback -----------------------------------------------------------------------


def metrics_table(result: dict[str, Any]) -> Table | None:
    metrics = result.get("metrics") or {}
    if not metrics:
        return None
    champion = result.get("champion_metrics") or {}
    compared = result.get("compared_with") or (result.get("champion_version") if champion else None)
    primary = result.get("primary_metric")
    cand = f"candidate {ver(result.get('candidate_version'))}"
    columns = ["metric", cand] + ([f"champion {ver(compared)}", "difference"] if champion else [])
    t = table(*columns, right=columns[1:])
    for name in sorted(metrics, key=lambda m: (m != primary, m)):
        row = [f"{name} *" if name == primary else name, num(metrics[name])]
        if champion:
            other = champion.get(name)
            diff = (
                metrics[name] - other
                if isinstance(other, int | float) and isinstance(metrics[name], int | float)
                else None
            )
            row += [num(other), signed(diff)]
        t.add_row(*row)
    return t


def ci_line(result: dict[str, Any]) -> str | None:
    ci = result.get("ci")
    if not ci:
        return None
    level = ci.get("level")
    level_text = f"{level:.0%} CI" if isinstance(level, int | float) else "CI"
    better = "higher" if ci.get("higher_is_better", True) else "lower"
    how = ", ".join(
        str(x) for x in (ci.get("method"), f"{ci['samples']} samples" if ci.get("samples") else None) if x
    )
    return (
        f"{ci.get('metric') or result.get('primary_metric')} difference {signed(ci.get('estimate'))}, "
        f"{level_text} [{signed(ci.get('low'))}, {signed(ci.get('high'))}] ({how}; {better} is better)"
    )


def render_evaluate(result: dict[str, Any], **_: Any) -> Iterable[RenderableType]:
    model, cand = result.get("model"), result.get("candidate_version")
    compared = result.get("compared_with")
    against = f"vs @champion {ver(compared)}" if compared is not None else "(no @champion to compare with)"
    yield heading(f"evaluate {model} {ver(cand)} {against} on {num(result.get('rows'))} held-out rows")
    t = metrics_table(result)
    if t is not None:
        yield t
    for line in (ci_line(result), result.get("note"), result.get("champion_error")):
        if line:
            yield line
    if result.get("primary_metric"):
        yield Text(f"* primary metric: {result['primary_metric']}", style="dim")
    if result.get("model_card_uri"):
        yield f"model card: {result['model_card_uri']}"


def render_promote(result: dict[str, Any], **_: Any) -> Iterable[RenderableType]:
    model, cand = result.get("model"), result.get("candidate_version")
    if result.get("promoted"):
        previous = result.get("previous_version")
        yield heading(
            f"PROMOTED {model} {ver(cand)} to @champion"
            + (f" (@previous {ver(previous)})" if previous is not None else ""),
            style="bold green",
        )
    else:
        champion = result.get("champion_version")
        stays = f"@champion stays {ver(champion)}" if champion is not None else "no @champion"
        yield heading(f"NOT PROMOTED {model} {ver(cand)}: {stays}", style="bold yellow")
    yield f"reason: {result.get('reason')}"
    checks = result.get("checks") or []
    if checks:
        t = table("check", "result", "detail")
        for c in checks:
            passed = c.get("passed")
            t.add_row(
                str(c.get("name")),
                NONE if passed is None else ("pass" if passed else "FAIL"),
                str(c.get("detail") or ""),
            )
        yield t
    t = metrics_table(result)
    if t is not None:
        yield t
    line = ci_line(result)
    if line:
        yield line
    if result.get("champion_error"):
        yield f"champion not scored: {result['champion_error']}"
    if result.get("model_card_uri"):
        yield f"model card: {result['model_card_uri']}"


def render_rollback(result: dict[str, Any], **_: Any) -> Iterable[RenderableType]:
    model = result.get("model")
    yield heading(
        f"rolled back {model}: @champion {ver(result.get('rolled_back_version'))} -> "
        f"{ver(result.get('champion_version'))}"
    )
    yield pairs(
        [
            ("@champion", ver(result.get("champion_version"))),
            ("@previous", ver(result.get("previous_version"))),
            ("rolled back", ver(result.get("rolled_back_version"))),
            ("reason", result.get("reason")),
        ]
    )


# -- drift -----------------------------------------------------------------------------------------------


def render_drift(result: dict[str, Any], **_: Any) -> Iterable[RenderableType]:
    if "models" in result and "model" not in result:  # drift-watch shape: every champion
        for sub in result["models"].values():
            yield from render_drift(sub)
        return
    model, version = result.get("model"), result.get("model_version")
    window = result.get("window") or {}
    if result.get("skipped"):
        yield heading(f"drift check of {model} skipped")
        yield str(result.get("message") or "")
        return
    detected = result.get("drift_detected")
    yield heading(
        f"{model} {ver(version)}: " + ("DRIFT DETECTED" if detected else "no drift"),
        style="bold red" if detected else "bold green",
    )
    features = result.get("features") or {}
    drifted = result.get("drifted_features") or [n for n, f in features.items() if f.get("drift")]
    share, bar = result.get("drift_share"), result.get("share_threshold")
    yield pairs(
        [
            ("window", window.get("description")),
            ("rows", f"{num(result.get('n_current'))} current vs {num(result.get('n_reference'))} reference"),
            (
                "drifted",
                f"{len(drifted)} of {len(features)} features"
                + (
                    f" ({share:.0%}, threshold {bar:.0%})"
                    if isinstance(share, float) and isinstance(bar, float)
                    else ""
                ),
            ),
            ("prediction drift", num(bool(result.get("prediction_drift")))),
        ]
    )
    t = table("feature", "kind", "method", "score", "threshold", "drift", right=("score", "threshold"))
    for name in sorted(features, key=lambda n: (not features[n].get("drift"), n)):
        f = features[name]
        t.add_row(
            name,
            str(f.get("kind") or ""),
            str(f.get("method") or ""),
            num(f.get("score")),
            num(f.get("threshold")),
            "DRIFT" if f.get("drift") else "no",
        )
    prediction = result.get("prediction")
    if prediction:
        t.add_section()
        t.add_row(
            "(prediction)",
            str(prediction.get("kind") or ""),
            str(prediction.get("method") or ""),
            num(prediction.get("score")),
            num(prediction.get("threshold")),
            "DRIFT" if prediction.get("drift") else "no",
        )
    yield t
    for name, why in (result.get("skipped_features") or {}).items():
        yield f"not checked: {name} ({why})"
    if window.get("prediction_skipped"):
        yield f"prediction drift not checked: {window['prediction_skipped']}"
    if result.get("event_emitted"):
        yield "emitted loopline.drift.detected (the retrain deployment listens for it)"


# -- status ----------------------------------------------------------------------------------------------


def _table_cell(info: dict[str, Any] | None) -> str:
    if not info:
        return NONE
    return f"{num(info.get('rows'))} {ver(info.get('version'))}"


def _last_drift(d: dict[str, Any] | None) -> tuple[str, str]:
    """(verdict, when) of the last drift check."""
    if not d:
        return "never checked", NONE
    when = str(d.get("checked_at") or "")[:16].replace("T", " ")
    if d.get("drift_detected"):
        names = ", ".join(d.get("drifted_features") or []) or "prediction"
        return f"DRIFT: {names} ({ver(d.get('model_version'))})", when
    return f"no drift ({ver(d.get('model_version'))})", when


def render_status(result: dict[str, Any], **_: Any) -> Iterable[RenderableType]:
    yield heading(f"loopline home {result.get('home')}")
    yield f"lake: {result.get('lake')}"
    datasets = result.get("datasets") or {}
    if datasets:
        kinds = ("raw", "clean", "quarantine", "features")
        t = table("dataset", "contract", *kinds, "batches", right=kinds)
        for name, d in sorted(datasets.items()):
            tables = d.get("tables") or {}
            contract = d.get("contract") or {}
            t.add_row(
                name,
                ver(contract.get("version")),
                *(_table_cell(tables.get(kind)) for kind in kinds),
                f"{num(d.get('batches_accepted'))} ok, {num(d.get('batches_rejected'))} rejected",
            )
        yield t
        yield Text("rows and Delta version per table", style="dim")
    else:
        yield "no datasets yet: loopline ingest --contract FILE --source FILE"
    models = result.get("models") or {}
    if models:
        challengers = any(m.get("challenger_version") is not None for m in models.values())
        aliases = ("@champion", "@previous") + (("@challenger",) if challengers else ())
        t = table("model", *aliases, "latest", "last drift", "checked")
        for name, m in sorted(models.items()):
            versions = [m.get(a.removeprefix("@") + "_version") for a in aliases]
            t.add_row(
                name,
                *(ver(v) for v in versions),
                ver(m.get("latest_version")),
                *_last_drift(m.get("last_drift")),
            )
        yield t
    else:
        yield "no models yet: loopline train --dataset D"
    if len(models) == 1:
        ((name, m),) = models.items()
        runs = m.get("last_runs") or []
        if runs:
            t = table(f"recent MLflow runs of {name}", "status", "validation metrics")
            for r in runs:
                metrics = ", ".join(
                    f"{k.removeprefix('val_')} {num(v)}" for k, v in sorted((r.get("metrics") or {}).items())
                )
                t.add_row(str(r.get("name")), str(r.get("status")), metrics or NONE)
            yield t


# -- run (the whole lifecycle) ---------------------------------------------------------------------------


def _ingest_line(batches: Any) -> str:
    items = batches if isinstance(batches, list) else (batches.get("batches") or [batches])
    rows = [sum(int(b.get(k) or 0) for b in items) for k in ("rows_in", "rows_clean", "rows_quarantined")]
    duplicates = sum(bool(b.get("duplicate_batch")) for b in items)
    text = f"{len(items)} batch(es) of {items[0].get('dataset') if items else NONE}: {rows[0]:,} rows in, {rows[1]:,} clean, {rows[2]:,} quarantined"
    return text + (f" ({duplicates} already ingested)" if duplicates else "")


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
            t.add_row(stage, line(result[stage]))
    yield t
    root = Path(home or ".").resolve()
    yield "Where to look:"
    yield f"  Delta tables: {root / 'lake'} (raw/, clean/, quarantine/, features/)"
    yield f"  Data Docs:    {root / 'data_docs'}"
    yield f"  MLflow:       mlflow ui --backend-store-uri sqlite:///{root / 'mlflow.db'}"
    for server in (result.get("deploy") or {}).get("servers", []):
        yield f"  Model server: {server.get('url')}/invocations ({ver(server.get('version'))}); `loopline down` stops it"
    api = os.environ.get("PREFECT_API_URL")
    yield (
        f"  Prefect UI:   {api.removesuffix('/api')}"
        if api
        else "  Prefect UI:   start one with `loopline up` (this run used an ephemeral API)"
    )


# -- up / down / init ------------------------------------------------------------------------------------


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


RENDERERS: dict[str, Renderer] = {
    "ingest": render_ingest,
    "features": render_features,
    "train": render_train,
    "evaluate": render_evaluate,
    "promote": render_promote,
    "rollback": render_rollback,
    "drift": render_drift,
    "status": render_status,
    "run": render_run,
    "up": render_up,
    "down": render_down,
    "init": render_init,
}
