"""Summaries of `loopline train`, `evaluate`, `promote` and `rollback`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from flows.render.parts import NONE, heading, num, pairs, signed, table, ver


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
