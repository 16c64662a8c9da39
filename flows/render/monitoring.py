"""Summaries of `loopline drift` and `loopline status`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.console import RenderableType
from rich.text import Text

from flows.render.parts import NONE, heading, num, pairs, table, ver


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
        yield "emitted loopline.drift.detected (the retrain deployment of a `loopline up` stack retrains on it)"


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
