"""Alerts, dashboards and the metrics behind them, checked against what the components really export.

- Every PromQL expression (infra/prometheus/rules.yml, the PrometheusRule, the Grafana dashboards and their
  variables, the KEDA triggers under infra/k8s) parses with promql-parser, and every metric name it uses is
  one that exists: on a real model server's /metrics, on a real exporter's /metrics after a real CPU
  training, an ingest with quarantined rows and a drift check have published, or in dcgm-exporter's
  vendored default lists. A label a selector matches on exists on that series too.
- rules.yml and the PrometheusRule carry identical groups; every alert has `for`, a severity, a summary and
  a description, and fires in promtool's unit tests (infra/prometheus/rules.test.yml) on the series that
  should fire it and not on a healthy neighbour; promtool accepts prometheus.yml and both rule sets.
- A real Prometheus scrapes the real model server, exporter and Pushgateway with the rules loaded: every
  rule evaluates without error and every dashboard query runs.
- Dashboards use the provisioned datasource's uid and the pinned Grafana's schemaVersion; prometheus.yml
  scrapes the compose services.
- The Pushgateway PUT, against a local server that records it: the group path, credentials in a header
  only, a body that parses as exposition text; a failing or absent gateway never fails the job. A real
  Pushgateway accepts the pushes of the real jobs.
- The exporter merges files (each family's HELP/TYPE once), leaves a broken file out, and never shows the
  MLflow URI's credentials in a response or its log.
promtool, prometheus and prometheus-pushgateway (Debian packages) fail their tests under CI=true when
missing and skip them otherwise. No Grafana runs here: its provisioning is checked by name only.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from tests.infra import metrics_support as ms

ROOT = ms.REPO
RULES = ROOT / "infra" / "prometheus" / "rules.yml"
RULE_TESTS = ROOT / "infra" / "prometheus" / "rules.test.yml"
PROMETHEUS_YML = ROOT / "infra" / "prometheus" / "prometheus.yml"
PROMETHEUS_RULE = ROOT / "infra" / "k8s" / "base" / "monitoring" / "prometheusrule.yaml"
GRAFANA = ROOT / "infra" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
COMPOSE = ROOT / "infra" / "compose.yaml"
GRAFANA_SCHEMA_VERSION = 41  # v41 (Feb 2025) is in every Grafana from 12.0; v42 came in Sept 2025
# Grafana's own variables, replaced before parsing (a dashboard's variables become ".*": All)
GRAFANA_GLOBALS = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}


def need_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is not installed (apt-get install prometheus prometheus-pushgateway)")
        pytest.skip(f"{name} is not installed")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise TimeoutError(what)


# -- the expressions -------------------------------------------------------------------------------------


def rule_groups() -> tuple[list, list]:
    plain = yaml.safe_load(RULES.read_text())["groups"]
    crd = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert (crd["apiVersion"], crd["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    return plain, crd["spec"]["groups"]


def dashboard_exprs(board: dict) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every variable (`label_values(X, l)` as the query it
    stands for, `count by (l) (X)`), Grafana's variables replaced as Grafana would."""
    names = [v["name"] for v in board["templating"]["list"]]

    def fill(expr: str) -> str:
        for key, value in GRAFANA_GLOBALS.items():
            expr = expr.replace(key, value)
        for name in names:
            expr = expr.replace(f"${name}", ".*")
        assert "$" not in expr, expr
        return expr

    found = []
    for panel in board["panels"]:
        for target in panel["targets"]:
            found.append((f"{board['uid']}: {panel['title']} {target['refId']}", fill(target["expr"])))
    for var in board["templating"]["list"]:
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", var["query"]["query"])
        assert match, var["query"]
        where = f"{board['uid']}: variable {var['name']}"
        found.append((where, f"count by ({match.group(2)}) ({fill(match.group(1))})"))
    return found


def keda_exprs() -> list[tuple[str, str]]:
    """Prometheus trigger queries anywhere under infra/k8s (ScaledObjects and the patches that add them)."""
    found = []

    def walk(node, where):
        if isinstance(node, dict):
            if node.get("type") == "prometheus" and "query" in (node.get("metadata") or {}):
                found.append((where, node["metadata"]["query"]))
            for value in node.values():
                walk(value, where)
        elif isinstance(node, list):
            for value in node:
                walk(value, where)

    for path in sorted((ROOT / "infra" / "k8s").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            walk(doc, str(path.relative_to(ROOT)))
    return found


def all_exprs() -> list[tuple[str, str]]:
    plain, crd = rule_groups()
    found = [(f"rules.yml {r['alert']}", r["expr"]) for g in plain for r in g["rules"]]
    found += [(f"PrometheusRule {r['alert']}", r["expr"]) for g in crd for r in g["rules"]]
    for path in DASHBOARDS:
        found += dashboard_exprs(json.loads(path.read_text()))
    return found + keda_exprs()


def test_rules_and_prometheusrule_carry_identical_groups():
    plain, crd = rule_groups()
    assert plain == crd
    alerts = [r for g in plain for r in g["rules"]]
    assert len({r["alert"] for r in alerts}) == len(alerts) == 9
    for rule in alerts:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert set(rule["annotations"]) == {"summary", "description"}, rule["alert"]


def test_every_expression_parses():
    exprs = all_exprs()
    assert len(exprs) > 60 and any(w.startswith("infra/k8s") for w, _ in exprs)
    for where, expr in exprs:
        try:
            assert ms.selectors(expr), where
        except ValueError as exc:
            pytest.fail(f"{where}: {exc}\n{expr}")


# -- the real components ---------------------------------------------------------------------------------


class ExporterProcess:
    """`python -m loopline.monitoring.exporter` on a free port, as compose and the k8s sidecar run it."""

    def __init__(self, home: Path, *args: str, env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = home / f"exporter-{self.port}.log"
        cmd = [
            sys.executable,
            "-m",
            "loopline.monitoring.exporter",
            "--port",
            str(self.port),
            "--home",
            str(home),
        ]
        self.proc = subprocess.Popen(
            [*cmd, *args], cwd=ROOT, env={**os.environ, **(env or {})}, stderr=open(self.log, "wb")
        )

    def get(self, path: str = "/metrics") -> str:
        import httpx

        return httpx.get(self.url + path, timeout=5).text

    def wait(self, needle: str, timeout: float = 60) -> str:
        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(self.log.read_text())
            try:
                text = self.get()
            except Exception:
                return None
            return text if needle in text else None

        return wait_for(
            ready, timeout, f"{needle} never appeared on the exporter: {self.log.read_text()[-2000:]}"
        )

    def stop(self) -> str:
        self.proc.terminate()
        self.proc.wait(10)
        return self.log.read_text()


class PrometheusProcess:
    """`prometheus` with infra/prometheus's scrape jobs pointed at local targets, every 2 s, rules loaded."""

    def __init__(self, directory: Path, binary: str, targets: dict[str, str]):
        port = free_port()
        targets = {**targets, "prometheus": f"127.0.0.1:{port}"}
        config = yaml.safe_load(PROMETHEUS_YML.read_text())
        config["global"] = {"scrape_interval": "2s", "scrape_timeout": "2s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(RULES)]
        config["scrape_configs"] = [
            {**job, "scrape_timeout": "2s", "static_configs": [{"targets": [targets[job["job_name"]]]}]}
            for job in config["scrape_configs"]
            if job["job_name"] in targets  # the Pushgateway has its own test
        ]
        (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = directory / "prometheus.log"
        self.api = f"http://127.0.0.1:{port}/api/v1"
        self.proc = subprocess.Popen(
            [binary, f"--config.file={directory / 'prometheus.yml'}", f"--storage.tsdb.path={directory / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=open(self.log, "wb"),
        )  # fmt: skip

    def query(self, expr: str) -> dict:
        import httpx

        try:
            return httpx.get(f"{self.api}/query", params={"query": expr}, timeout=10).json()
        except httpx.HTTPError as exc:  # not up yet
            return {"status": "unreachable", "error": str(exc), "data": {"result": []}}

    def evaluated_rules(self) -> list | None:
        import httpx

        groups = httpx.get(f"{self.api}/rules", timeout=10).json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return rules if rules and all(r.get("lastEvaluation", "").startswith("20") for r in rules) else None

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)


MODEL = "monitored"  # its own name in the test process's shared registry: the other models stay as they are


def run_batch_jobs(home: Path, tracking_uri: str) -> dict:
    """Real batch jobs into `home` (the registry at `tracking_uri`): an ingest with quarantined rows, a tiny
    CPU training of MODEL, @champion, a drift check of a drifted window; each publishes as in production."""
    from mlflow import MlflowClient

    from loopline.config import LifecycleConfig, SyntheticConfig
    from loopline.data.contracts import load_contract
    from loopline.data.ingest import ingest_source
    from loopline.data.synthetic import generate_frame, generate_source
    from loopline.features import build_features
    from loopline.monitoring import detect_drift, drift_metrics_text, load_profile
    from loopline.monitoring.data_metrics import publish_ingest_metrics
    from loopline.serving.registry_source import RegistrySource
    from loopline.storage.lake import Lake
    from loopline.train import run_training
    from tasks.drift import write_metrics
    from tests.serving_support import DEMO_CONTRACT

    lake = Lake(root=str(home / "lake"))
    contract = load_contract(DEMO_CONTRACT)
    cfg = LifecycleConfig(
        home=str(home),
        data={"contract": str(DEMO_CONTRACT)},
        model_name=MODEL,
        validation={"data_docs": False},  # HTML nobody reads here
        training={"max_steps": 5, "hidden_sizes": [8], "log_every_steps": 5},
    )
    source = generate_source(SyntheticConfig(rows=600, seed=3, bad_fraction=0.02), home / "landing")
    (batch,) = ingest_source(str(source), contract, lake, cfg)
    assert batch.accepted and batch.rows_quarantined > 0, batch
    publish_ingest_metrics(lake, cfg, contract)  # what tasks/ingest.py's ingest_batch calls
    build_features(lake, contract, cfg.features)
    trained = run_training(cfg, contract.dataset, lake=lake, tracking_uri=tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    client.set_registered_model_alias(MODEL, "champion", trained["model_version"])
    bundle = RegistrySource(tracking_uri, home / "cache").download(MODEL, trained["model_version"])
    window = generate_frame(SyntheticConfig(rows=400, seed=9, drift_columns=["age"], drift_mean_shift=3.0))
    report = detect_drift(load_profile(bundle / "reference_profile.json"), window, cfg.drift)
    write_metrics(cfg, MODEL, drift_metrics_text(report, MODEL))  # the drift flow's report_drift step
    return {"run_id": trained["run_id"], "version": trained["model_version"], "tracking_uri": tracking_uri}


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    """A model server (started first: it loads while the batch jobs run) and an exporter on their home."""
    import httpx

    from tests.serving_support import ServerProcess, shared_registry

    registry = shared_registry()
    server_home = tmp_path_factory.mktemp("monitoring-server")
    server = ServerProcess(
        "demo", str(server_home), registry["tracking_uri"], "--no-inference-log", "--poll-seconds", "0"
    )
    exporter = prometheus = None
    try:
        home = tmp_path_factory.mktemp("monitoring-home")
        # the exporter and Prometheus start before there is anything to read: they find it as it comes
        exporter = ExporterProcess(
            home, "--registry-seconds", "1", env={"MLFLOW_TRACKING_URI": registry["tracking_uri"]}
        )
        if shutil.which("prometheus"):
            prometheus = PrometheusProcess(
                tmp_path_factory.mktemp("prometheus"),
                shutil.which("prometheus"),
                {"loopline-model-server": server.url[7:], "loopline-exporter": exporter.url[7:]},
            )
        jobs = run_batch_jobs(home, registry["tracking_uri"])
        server.wait_ready()
        ms.exercise_model_server(server.url)
        yield {
            **jobs,
            "home": home,
            "server": server,
            "exporter": exporter,
            "prometheus": prometheus,
            "serving_text": httpx.get(f"{server.url}/metrics", timeout=10).text,
            "exporter_text": exporter.wait(f'loopline_registry_champion_version{{model="{MODEL}"}}'),
        }
    finally:
        server.stop()
        for process in (exporter, prometheus):
            if process is not None:
                process.stop()


@pytest.mark.integration
def test_every_metric_name_used_is_exported(platform):
    from loopline.train.gpu import DCGM_METRICS

    serving = ms.exposed_names(platform["serving_text"])
    exported = ms.exposed_names(platform["exporter_text"])
    dcgm = ms.dcgm_names()
    # what training writes from NVML carries dcgm-exporter's own names
    assert {name for name, *_ in DCGM_METRICS} <= dcgm
    champion = f'loopline_registry_champion_version{{model="{MODEL}"}} {float(platform["version"])}'
    assert champion in platform["exporter_text"]
    assert f'run="{platform["run_id"]}"' in platform["exporter_text"]
    real = {**serving, **exported}
    sampled = {  # label names are known for families with a sample: the others' are not checked
        *ms.exposed_names(platform["serving_text"], sampled_only=True),
        *ms.exposed_names(platform["exporter_text"], sampled_only=True),
    }
    for where, expr in all_exprs():
        for name, matchers in ms.selectors(expr):
            if name in dcgm:
                continue
            assert name in real, f"{where}: {name} is exported by nothing that runs here"
            for label in set(matchers) - ms.TARGET_LABELS if name in sampled else ():
                assert label in real[name], f"{where}: {name} has no label {label!r} ({sorted(real[name])})"
        for label, names, made in ms.label_uses(expr):  # by (...) and on (...)
            ours = (names - dcgm) & sampled
            if ours and label not in made | ms.TARGET_LABELS:
                assert any(label in real[n] for n in ours), f"{where}: no label {label!r} on {sorted(ours)}"


@pytest.mark.integration
def test_a_real_prometheus_scrapes_them_and_evaluates_every_rule_and_panel(platform):
    """Prometheus (Debian's 2.42; compose pins v3.5.0) with the rules, scraping the real server and exporter:
    each rule's health is ok, each dashboard and KEDA query runs on real series, and every name they use
    that has a sample got stored."""
    need_tool("prometheus")
    prometheus = platform["prometheus"]
    sampled = {
        *ms.exposed_names(platform["serving_text"], sampled_only=True),
        *ms.exposed_names(platform["exporter_text"], sampled_only=True),
    }
    used = {name for _, expr in all_exprs() for name, _ in ms.selectors(expr)} & sampled
    assert len(used) > 20

    def stored():  # a scrape after the batch jobs published
        found = prometheus.query('count by (__name__) ({__name__=~"loopline_.+"})')["data"]["result"]
        return used <= {r["metric"]["__name__"] for r in found}

    wait_for(stored, 60, f"Prometheus did not store them all: {prometheus.log.read_text()[-2000:]}")
    rules = wait_for(prometheus.evaluated_rules, 30, "the rules were never evaluated")
    assert len(rules) == 9 and all(r["health"] == "ok" for r in rules), [
        (r["name"], r.get("lastError")) for r in rules
    ]
    panels = [e for path in DASHBOARDS for e in dashboard_exprs(json.loads(path.read_text()))]
    for where, expr in panels + keda_exprs():
        answer = prometheus.query(expr)
        assert answer["status"] == "success", f"{where}: {answer}"


# -- promtool --------------------------------------------------------------------------------------------


def test_promtool_accepts_the_config_and_rules_and_every_alert_fires_in_its_unit_tests(tmp_path):
    promtool = need_tool("promtool")
    config = PROMETHEUS_YML.read_text()
    assert "/etc/prometheus/rules.yml" in config  # where compose mounts rules.yml
    (tmp_path / "prometheus.yml").write_text(config.replace("/etc/prometheus/rules.yml", str(RULES)))
    _, crd = rule_groups()
    (tmp_path / "crd-rules.yml").write_text(yaml.safe_dump({"groups": crd}))
    for args in (
        ["check", "config", str(tmp_path / "prometheus.yml")],
        ["check", "rules", str(RULES), str(tmp_path / "crd-rules.yml")],
        ["test", "rules", str(RULE_TESTS)],
    ):
        done = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    plain, _ = rule_groups()
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {t["alertname"] for case in tests for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert fired == {r["alert"] for g in plain for r in g["rules"]}


# -- Grafana and compose wiring --------------------------------------------------------------------------


def test_dashboards_use_the_provisioned_datasource_and_the_pinned_grafana_schema():
    (source,) = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text())[
        "datasources"
    ]
    assert (source["type"], source["url"]) == ("prometheus", "http://prometheus:9090")
    (provider,) = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "loopline.yaml").read_text())[
        "providers"
    ]
    compose = yaml.safe_load(COMPOSE.read_text())["services"]
    grafana = compose["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"] if v.startswith("./")}
    assert mounts[provider["options"]["path"]] == "./grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    major, minor = (int(x) for x in grafana["image"].split(":")[1].split(".")[:2])
    assert (major, minor) >= (12, 0), grafana["image"]  # schemaVersion 41 needs Grafana 12.0 or later
    assert not (GRAFANA / "loopline.json").exists()
    assert {p.stem for p in DASHBOARDS} == {"data-quality", "training", "serving", "drift"}
    uids = set()
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        assert board["schemaVersion"] == GRAFANA_SCHEMA_VERSION, path.name
        assert board["uid"] not in uids
        uids.add(board["uid"])
        panels = board["panels"]
        assert len({p["id"] for p in panels}) == len(panels)
        for item in [*panels, *(t for p in panels for t in p["targets"]), *board["templating"]["list"]]:
            assert item["datasource"] == {"type": "prometheus", "uid": source["uid"]}, (
                path.name,
                item.get("title"),
            )
        for panel in panels:
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24 and panel["targets"], (path.name, panel["title"])


def test_prometheus_scrapes_the_compose_services():
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    targets = {t for j in jobs.values() for c in j["static_configs"] for t in c["targets"]}
    assert {"model-server:8080", "exporter:9101", "pushgateway:9091"} <= targets
    for target in targets - {"localhost:9090"}:
        host, port = target.split(":")
        published = [p.rsplit(":", 1)[-1] for p in services[host].get("ports", [])]
        assert port in published or port in " ".join(services[host].get("command", [])), target
    assert jobs["pushgateway"]["honor_labels"] is True
    exporter = services["exporter"]["command"]
    assert exporter[:3] == ["python", "-m", "loopline.monitoring.exporter"] and "9101" in exporter


# -- publishing ------------------------------------------------------------------------------------------


class Recorder(BaseHTTPRequestHandler):
    """A stand-in Pushgateway that records every request and answers `status` (no Pushgateway binary is
    needed for this test; the one below uses a real one)."""

    requests: list = []
    status = 200

    def do_PUT(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Recorder.requests.append((self.command, self.path, dict(self.headers), body.decode()))
        self.send_response(Recorder.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def recorder():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Recorder.requests, Recorder.status = [], 200
    yield f"127.0.0.1:{server.server_port}"
    server.shutdown()


def test_pushgateway_put_carries_the_group_path_a_valid_body_and_credentials_in_a_header(
    recorder, tmp_path, caplog
):
    from prometheus_client.parser import text_string_to_metric_families

    from loopline.monitoring.publish import Families, publish

    text = (
        Families()
        .gauge("loopline_drift_share", "share", 0.25, model="fraud.eu")
        .counter("loopline_ingest_rows_total", "rows", 12, dataset="d", outcome="clean")
        .text()
    )
    path = publish(
        tmp_path, "drift", text, {"model": "fraud.eu"}, pushgateway_url=f"http://bob:pw%2F1@{recorder}/pg/"
    )
    path2 = publish(tmp_path, "ingest", text, {"source": "s3://b/x"}, pushgateway_url=f"http://{recorder}")
    (m1, p1, h1, b1), (m2, p2, h2, b2) = Recorder.requests
    assert (m1, p1) == ("PUT", "/pg/metrics/job/drift/model/fraud.eu")
    assert h1["Authorization"] == "Basic " + base64.b64encode(b"bob:pw/1").decode()
    assert h1["Content-Type"].startswith("text/plain; version=0.0.4")
    encoded = base64.urlsafe_b64encode(b"s3://b/x").decode()
    assert (m2, p2) == ("PUT", f"/metrics/job/ingest/source@base64/{encoded}") and "Authorization" not in h2
    assert b1 == b2 == path.read_text() == path2.read_text() == text
    families = {f.name: f for f in text_string_to_metric_families(b1)}
    assert families["loopline_drift_share"].samples[0].labels == {"model": "fraud.eu"}
    assert families["loopline_ingest_rows"].type == "counter"

    Recorder.status = 500  # a failing gateway, then none at all: logged, the job goes on
    with caplog.at_level(logging.WARNING, logger="loopline.monitoring.publish"):
        publish(tmp_path, "drift", text, {"model": "m"}, pushgateway_url=f"http://bob:secretpw@{recorder}")
        publish(
            tmp_path,
            "drift",
            text,
            {"model": "m"},
            pushgateway_url=f"http://bob:secretpw@127.0.0.1:{free_port()}",
        )
    assert len(caplog.records) == 2 and "secretpw" not in caplog.text and "***@" in caplog.text
    assert (tmp_path / "metrics" / "drift_m.prom").read_text() == text


@pytest.mark.integration
def test_a_real_pushgateway_accepts_every_jobs_push(platform, tmp_path, caplog):
    import httpx

    from loopline.monitoring.publish import publish

    binary = need_tool("prometheus-pushgateway")
    port = free_port()
    proc = subprocess.Popen(
        [binary, f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "pushgateway.log", "wb"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(f"{url}/-/ready"), 20, "the Pushgateway did not start")
        files = {"training": MODEL, "ingest": "demo", "drift": MODEL}
        label = {"training": "model", "ingest": "dataset", "drift": "model"}
        with caplog.at_level(logging.WARNING, logger="loopline.monitoring.publish"):
            for job, value in files.items():
                text = (platform["home"] / "metrics" / f"{job}_{value}.prom").read_text()
                publish(tmp_path, job, text, {label[job]: value}, pushgateway_url=url)
        assert not caplog.records, caplog.text  # a refused push is only a warning: none may be logged
        groups = httpx.get(f"{url}/api/v1/metrics", timeout=10).json()["data"]
        pushed = {g["labels"]["job"]: g for g in groups}
        assert set(pushed) == set(files), (tmp_path / "pushgateway.log").read_text()
        for job, group in pushed.items():
            assert group["push_failure_time_seconds"]["metrics"][0]["value"] == "0", job
        exposed = ms.exposed_names(httpx.get(f"{url}/metrics", timeout=10).text)
        wanted = ms.exposed_names(platform["exporter_text"])
        assert {
            n for n in wanted if n.startswith(("loopline_training", "loopline_ingest", "loopline_drift"))
        } <= set(exposed)
    finally:
        proc.terminate()
        proc.wait(10)


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_training_gauges_hold_the_slot_while_running_and_label_gpu_readings_with_the_run(tmp_path):
    """A GPU run's gauges (the sample is what NVML returns on a GPU host; none exists here): the slot and
    running gauges drop to 0 at close, DCGM readings carry model and run so the idle-GPU rule can join."""
    from loopline.train.gpu import GpuSample, GpuSampler
    from loopline.train.telemetry import TrainingTelemetry

    sampler = GpuSampler()
    sampler.latest = [
        GpuSample(0, "GPU-abc", "NVIDIA H100", time.time(), 2**30, 80 * 2**30, utilization_percent=3.0)
    ]
    telemetry = TrainingTelemetry(
        str(tmp_path),
        "m",
        "run1",
        sampler=sampler,
        price_per_gpu_hour=4.0,
        gpu_slot_held=True,
        nodes=2,
        interval_seconds=60,
    ).start()
    telemetry.started_at -= 900  # 15 minutes in
    telemetry.progress({"step": 40, "total_steps": 100, "loss": 0.5})
    live = samples(telemetry.text())
    telemetry.close()  # the run is over: published at once, slot released
    final = samples((tmp_path / "metrics" / "training_m.prom").read_text())
    assert live["loopline_training_gpu_slot_held"] == live["loopline_training_running"] == 1
    assert final["loopline_training_gpu_slot_held"] == final["loopline_training_running"] == 0
    assert live["loopline_training_step"] == 40 and live["DCGM_FI_DEV_GPU_UTIL"] == (3.0, "m", "run1")
    assert 1800 <= live["loopline_training_gpu_seconds"] < 1920  # one GPU on each of 2 nodes x 15 minutes


def samples(text: str) -> dict:
    """{sample name: value}, and for DCGM names (value, model, run)."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        s.name: (s.value, s.labels["model"], s.labels["run"]) if s.name.startswith("DCGM") else s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


# -- the exporter ----------------------------------------------------------------------------------------


def test_exporter_merges_families_once_and_leaves_a_broken_file_out(tmp_path):
    from loopline.monitoring.publish import Families, publish

    for model, share in (("a", 0.1), ("b", 0.7)):
        publish(
            tmp_path,
            "drift",
            Families().gauge("loopline_drift_share", "share", share, model=model).text(),
            {"model": model},
        )
    (tmp_path / "metrics" / "broken.prom").write_text("loopline_drift_share{model=\n")
    (tmp_path / "metrics" / ".drift_a.prom.tmp-1-x").write_text("half a fi")  # a writer killed mid-write
    exporter = ExporterProcess(tmp_path, "--registry-seconds", "0")
    try:
        text = exporter.wait("loopline_exporter_textfile_errors")
        assert json.loads(exporter.get("/health"))["status"] == "ok"
    finally:
        exporter.stop()
    assert (
        text.count("# TYPE loopline_drift_share gauge") == 1
        and text.count("# HELP loopline_drift_share ") == 1
    )
    assert 'loopline_drift_share{model="a"} 0.1' in text and 'loopline_drift_share{model="b"} 0.7' in text
    assert "loopline_exporter_textfile_errors 1.0" in text and 'file="broken.prom"' not in text
    assert "loopline_exporter_registry_up" not in text  # --registry-seconds 0: no registry


def test_exporter_never_shows_the_tracking_uris_credentials(tmp_path):
    secret = "s3cr3t-" + os.urandom(4).hex()
    uri = f"http://alice:{secret}@127.0.0.1:{free_port()}/"  # nothing listens: MLflow's error names the URL
    exporter = ExporterProcess(
        tmp_path,
        "--registry-seconds",
        "1",
        env={
            "MLFLOW_TRACKING_URI": uri,
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": "2",
        },
    )
    try:
        text = exporter.wait("loopline_exporter_registry_up 0.0")
        health = exporter.get("/health")
    finally:
        log = exporter.stop()
    assert "registry read failed" in log and "127.0.0.1" in log  # the failure was logged, redacted
    for shown in (text, health, log):
        assert secret not in shown and "alice:" not in shown
