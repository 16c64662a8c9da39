"""The model card: one markdown page per evaluation or promotion decision.

Rendered from the promotion (or evaluation) result dict alone, so the Prefect artifact and the MLflow
artifact are the same text: data versions and the contract (the lake's version of it and its hash), metrics
with the interval against the champion, the gate's checks, slices, infra validation, and the decision with
its reason.
"""

from __future__ import annotations

import math
from typing import Any


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.{digits}f}"
    return str(value)


def _signed(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:+.4f}"


def _contract_label(data: dict[str, Any]) -> str:
    """'v3 (`hash`)': the lake's contract version the model was trained on, and its hash. Models trained
    before training tagged the version (`contract.version`) show the hash alone."""
    digest = f"`{data.get('contract_hash') or '—'}`"
    version = data.get("contract_version")
    return f"v{version} ({digest})" if version not in (None, "") else digest


def render_model_card(result: dict[str, Any]) -> str:
    """Markdown for a `promote` result (or an `evaluate` result: then the decision section is omitted)."""
    model, version = result.get("model"), result.get("candidate_version")
    primary = result.get("primary_metric")
    lines = [f"# Model card: `{model}` version {version}", ""]
    if "promoted" in result:
        verdict = "PROMOTED to @champion" if result["promoted"] else "NOT promoted"
        lines += [f"**Decision: {verdict}.** {result.get('reason') or ''}", ""]
        lines += [
            f"After the decision: `@champion` = {_fmt(result.get('champion_version'))}, "
            f"`@previous` = {_fmt(result.get('previous_version'))}.",
            "",
        ]
    data = result.get("data") or {}
    contract = result.get("contract") or {}
    lines += ["## Data", ""]
    lines += [
        "| dataset | features version | clean version | transform | contract | test rows |",
        "|---|---:|---:|---|---|---:|",
        f"| {result.get('dataset', '—')} | {_fmt(data.get('features_version'))} | {_fmt(data.get('clean_version'))} "
        f"| `{data.get('transform_version', '—')}` | {_contract_label(data)} | {_fmt(result.get('rows'))} |",
        "",
    ]
    if contract:
        cols = ", ".join(f"`{k}` {v}" for k, v in (contract.get("columns") or {}).items())
        lines += [
            f"Contract {_contract_label(data)}: task **{contract.get('task')}**, id `{contract.get('id')}`, "
            f"label `{contract.get('label')}`; columns: {cols}.",
            "",
        ]
    if data.get("candidate_run_id"):
        lines += [
            f"Candidate run: `{data['candidate_run_id']}`, code `{data.get('code_version') or '—'}`"
            + (f", loaded by `{data['candidate_loader']}`." if data.get("candidate_loader") else "."),
            "",
        ]
    metrics = result.get("metrics")
    if metrics:
        champ = result.get("champion_metrics") or {}
        champion_label = (
            f"champion (v{result['compared_with']})" if result.get("compared_with") else "champion"
        )
        lines += ["## Metrics on the held-out test split", ""]
        lines += [f"| metric | candidate | {champion_label} | candidate − champion |", "|---|---:|---:|---:|"]
        for name, value in metrics.items():
            other = champ.get(name)
            delta = value - other if other is not None else None
            star = " (primary)" if name == primary else ""
            lines.append(f"| {name}{star} | {_fmt(value)} | {_fmt(other)} | {_signed(delta)} |")
        lines.append("")
    ci = result.get("ci")
    if ci:
        lines += [
            f"Bootstrap {int(ci['level'] * 100)}% interval of candidate − champion on **{ci['metric']}**: "
            f"{_signed(ci['estimate'])} [{_signed(ci['low'])}, {_signed(ci['high'])}] "
            f"({ci['samples']} replicates, {ci['method']}, {ci['rows']} rows; "
            f"{'higher' if ci['higher_is_better'] else 'lower'} is better).",
            "",
        ]
    elif result.get("champion_error"):
        lines += [f"The champion could not score these rows: {result['champion_error']}", ""]
    elif metrics is not None and not result.get("champion_metrics"):
        lines += ["No champion to compare with: this is the first model.", ""]
    checks = result.get("checks") or []
    if checks:
        lines += ["## Gate", "", "| check | passed | detail |", "|---|:---:|---|"]
        for check in checks:
            mark = "yes" if check["passed"] else ("—" if check["passed"] is None else "**no**")
            lines.append(f"| {check['name']} | {mark} | {check['detail']} |")
        lines.append("")
    slices = result.get("slices") or []
    if slices:
        lines += [f"## Slices ({primary})", ""]
        lines += [
            "| column | value | rows | candidate | champion | improvement | judged |",
            "|---|---|---:|---:|---:|---:|:---:|",
        ]
        for s in slices:
            champ_value = (s.get("champion_metrics") or {}).get(primary)
            lines.append(
                f"| {s['column']} | {s['value']} | {s['rows']} | {_fmt(s['metrics'].get(primary))} | {_fmt(champ_value)} "
                f"| {_signed(s.get('improvement'))} | {'yes' if s['judged'] else 'no'} |"
            )
        lines.append("")
    infra = result.get("infra_validation")
    if infra:
        if infra.get("skipped"):
            lines += ["## Infra validation", "", "Skipped.", ""]
        elif infra.get("refused"):  # the loader gate: nothing of the model was loaded
            lines += ["## Infra validation", "", f"Refused before loading: {infra.get('reason')}", ""]
        else:
            status = "passed" if infra["ok"] else f"FAILED: {infra.get('reason')}"
            loader = infra.get("loader") or "load"
            lines += [
                "## Infra validation",
                "",
                f"Own process (a fork of the validation template), `{loader}` + a `dataframe_split` request "
                f"of {infra.get('rows')} contract rows: {status} "
                f"(load {_fmt(infra.get('load_s'), 2)} s, predict {_fmt(infra.get('predict_s'), 3)} s, "
                f"total {_fmt(infra.get('seconds'), 2)} s).",
                "",
            ]
    return "\n".join(lines).rstrip() + "\n"
