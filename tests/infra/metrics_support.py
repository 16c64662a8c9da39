"""Metric names that really exist, for infra tests that check PromQL (alert rules, dashboards, KEDA triggers).

- `start_model_server()`: `python -m loopline.serving` on the shared registry's `demo` model (as the
  Deployment and compose run it), after one scoring request, so every labelled family has samples;
  `serving_metrics_text()`: its /metrics text, read once per test process (cached) and the server stopped.
- `exposed_names(text)`: {metric name Prometheus stores: label names} of an exposition, read as Prometheus
  reads it (a counter sample keeps the name it is written with; a histogram family with no sample yet still
  yields its _bucket/_sum/_count names).
- `dcgm_names()`: the DCGM fields dcgm-exporter exports by default (vendored under
  infra/schemas/prometheus-metrics/, source in its README).
- `selectors(expr)`: the vector selectors of a PromQL expression (promql-parser; ValueError on bad syntax).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DCGM_LISTS = [
    REPO / "infra" / "schemas" / "prometheus-metrics" / name
    for name in ("dcgm-exporter-default-counters.csv", "dcgm-exporter-dcp-metrics-included.csv")
]
# labels Prometheus (or the Prometheus Operator) adds to a scraped series: no exporter's to export
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "endpoint", "container"}
_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+\S+")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="(?:[^"\\]|\\.)*"')
_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("", "_sum", "_count")}


def start_model_server(home: Path):
    """A ready model server on the shared registry's `demo` model, exercised (`exercise_model_server`). The
    caller stops it (`.stop()`)."""
    from tests.serving_support import ServerProcess, shared_registry

    registry = shared_registry()
    server = ServerProcess(
        "demo", str(home), registry["tracking_uri"], "--no-inference-log", "--poll-seconds", "0"
    ).wait_ready()
    try:
        exercise_model_server(server.url)
    except BaseException:
        server.stop()
        raise
    return server


def exercise_model_server(url: str) -> None:
    """One scoring request and one malformed one, so the labelled families (per version, per error reason)
    have samples and their label names show."""
    import httpx

    from tests.serving_support import demo_rows, payloads

    scored = httpx.post(f"{url}/invocations", json=payloads(demo_rows(2))["dataframe_split"], timeout=30)
    assert scored.status_code == 200, scored.text
    bad = httpx.post(
        f"{url}/invocations", content=b"{", headers={"content-type": "application/json"}, timeout=30
    )
    assert bad.status_code == 400, bad.text


@functools.cache
def serving_metrics_text() -> str:
    """A real model server's /metrics after one scoring request (one server per test process)."""
    import shutil
    import tempfile

    import httpx

    home = Path(tempfile.mkdtemp(prefix="loopline-metrics-server-"))
    server = start_model_server(home)
    try:
        return httpx.get(f"{server.url}/metrics", timeout=10).text
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


def exposed_names(text: str, *, sampled_only: bool = False) -> dict[str, set[str]]:
    """{name: label names seen on it} for every series name the exposition gives Prometheus (`sampled_only`:
    only names with a sample now, which a scrape stores at once)."""
    names: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE ") and not sampled_only:
            _, _, family, kind = line.split(None, 3)
            for suffix in _SUFFIXES.get(kind.strip(), ("",)):
                names.setdefault(family + suffix, set())
            if kind.strip() == "histogram":
                names[family + "_bucket"].add("le")
        elif line and not line.startswith("#"):
            match = _SAMPLE.match(line)
            assert match, f"not a sample line: {line!r}"
            names.setdefault(match.group(1), set()).update(_LABEL.findall(match.group(2) or ""))
    return names


def dcgm_names() -> set[str]:
    """Uncommented field names of dcgm-exporter's default lists (`label` rows are labels, not series)."""
    found = set()
    for path in DCGM_LISTS:
        for line in path.read_text().splitlines():
            fields = [f.strip() for f in line.split(",")]
            if (
                line.strip()
                and not line.lstrip().startswith("#")
                and len(fields) >= 3
                and fields[1] != "label"
            ):
                found.add(fields[0])
    return found


def selectors(expr: str) -> list[tuple[str, dict[str, tuple[str, str]]]]:
    """[(metric name, {label: (op, value)})] of every vector selector in `expr`; ValueError when it does not
    parse."""
    import promql_parser

    found = []

    def visit(node, *_):
        if isinstance(node, promql_parser.VectorSelector):
            matchers = {m.name: (str(m.op).rsplit(".", 1)[-1], m.value) for m in node.matchers.matchers}
            name = node.name or matchers.pop("__name__", ("", ""))[1]
            found.append((name, matchers))

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def label_uses(expr: str) -> list[tuple[str, set[str], set[str]]]:
    """(label, metric names below, labels label_replace makes below) for every label an aggregation groups
    by (`by (...)`) or a binary operator joins on (`on (...)`, each side apart): the label must exist on
    the series below for the grouping or join to mean anything."""
    import promql_parser

    def below(node) -> tuple[set[str], set[str]]:
        names: set[str] = set()
        made: set[str] = set()

        def visit(n, *_):
            if isinstance(n, promql_parser.VectorSelector):
                names.add(n.name or "")
            elif isinstance(n, promql_parser.Call) and n.func.name == "label_replace":
                made.add(n.args[1].val)

        promql_parser.walk(node, visit)
        return names, made

    found = []

    def visit(node, *_):
        if isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            if node.modifier.type == promql_parser.AggModifierType.By:
                names, made = below(node.expr)
                found.extend((label, names, made) for label in node.modifier.labels)
        elif isinstance(node, promql_parser.BinaryExpr) and node.modifier is not None:
            matching = node.modifier.matching
            if matching is not None and str(matching.type).endswith("Include"):  # on (...)
                for side in (node.lhs, node.rhs):
                    names, made = below(side)
                    found.extend((label, names, made) for label in matching.labels)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found
