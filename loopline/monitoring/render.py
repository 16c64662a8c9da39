"""A drift report as Prometheus text (for /metrics or a textfile collector) and as markdown (Prefect artifact)."""

from __future__ import annotations

import math

from loopline.monitoring.detect import DriftReport


def _label(value: str) -> str:
    """Escape a Prometheus label value (backslash, double quote, newline)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "NaN"
    return repr(float(value))


def drift_metrics_text(report: DriftReport, model: str) -> str:
    """Prometheus exposition text: drift share, verdict, prediction drift, and a score per feature."""
    mdl = _label(model)
    lines = [
        "# HELP loopline_drift_share Share of features whose distribution drifted in the last drift check.",
        "# TYPE loopline_drift_share gauge",
        f'loopline_drift_share{{model="{mdl}"}} {_number(report.drift_share)}',
        "# HELP loopline_drift_detected 1 when the last drift check detected dataset or prediction drift.",
        "# TYPE loopline_drift_detected gauge",
        f'loopline_drift_detected{{model="{mdl}"}} {int(report.drift_detected)}',
        "# HELP loopline_prediction_drift 1 when the prediction distribution drifted in the last check.",
        "# TYPE loopline_prediction_drift gauge",
        f'loopline_prediction_drift{{model="{mdl}"}} {int(report.prediction_drift)}',
        "# HELP loopline_feature_drift_score Drift score per feature (p-value for ks/chisquare, distance otherwise).",
        "# TYPE loopline_feature_drift_score gauge",
    ]
    for name, result in report.features.items():
        labels = f'model="{mdl}",feature="{_label(name)}",method="{result["method"]}"'
        lines.append(f"loopline_feature_drift_score{{{labels}}} {_number(result['score'])}")
    lines += [
        "# HELP loopline_feature_drift 1 when the feature drifted in the last check.",
        "# TYPE loopline_feature_drift gauge",
    ]
    for name, result in report.features.items():
        lines.append(
            f'loopline_feature_drift{{model="{mdl}",feature="{_label(name)}"}} {int(result["drift"])}'
        )
    return "\n".join(lines) + "\n"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if abs(value) < 1e-3 and value != 0 else f"{value:.4f}"


def render_drift_markdown(report: DriftReport, model: str | None = None) -> str:
    """Markdown summary and per-feature table (drifted first, then by how close to drifting)."""
    title = f"# Drift report: {model}" if model else "# Drift report"
    verdict = "**Drift detected**" if report.drift_detected else "**No drift**"
    lines = [
        title,
        "",
        f"{verdict}: {report.n_drifted} of {report.n_features} features drifted "
        f"({report.drift_share:.1%}; threshold {report.share_threshold:.0%}); "
        f"prediction drift: {'yes' if report.prediction_drift else 'no'}.",
        "",
        f"Reference rows: {report.n_reference:,} | current rows: {report.n_current:,} | "
        f"multiple-testing correction: {report.correction}",
        "",
    ]
    if report.prediction:
        p = report.prediction
        lines += [
            f"Prediction distribution: {p['method']} = {_fmt(p['score'])} "
            f"(threshold {_fmt(p['threshold'])}) -> {'drift' if p['drift'] else 'no drift'}",
            "",
        ]
    lines += ["| feature | kind | method | score | threshold | drift |", "|---|---|---|---|---|---|"]
    ordered = sorted(report.features.items(), key=lambda item: (not item[1]["drift"], item[0]))
    for name, r in ordered:
        lines.append(
            f"| {_cell(name)} | {r.get('kind', '')} | {r['method']} | {_fmt(r['score'])} | "
            f"{_fmt(r['threshold'])} | {'**yes**' if r['drift'] else 'no'} |"
        )
    if report.skipped:
        lines += [
            "",
            "Not scored: " + ", ".join(f"{_cell(k)} ({v})" for k, v in sorted(report.skipped.items())),
        ]
    return "\n".join(lines) + "\n"
