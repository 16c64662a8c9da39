"""The Kubernetes launcher of multi-node training (training.launcher kubernetes | kubeflow), offline.

Manifests: infra/k8s/training/ renders for 1, 2 and 8 nodes; the Job, Service and ConfigMap validate with
kubernetes-validate (strict, Kubernetes 1.33.0), the TrainJob against the CRD schema vendored from
kubeflow/trainer v2.3.0 (strict) and its metadata as ObjectMeta. Each pod's view is then computed the way
the pod computes it: its environment and the ConfigMap's config through loopline.train.topology give node
rank k for pod k, node 0's address under the Service, and `loopline-<run key>` with the flow's run key.

Create / follow / cleanup: no Kubernetes API server can run here (PyPI, npm and Debian carry none; Debian
has etcd but no kube-apiserver), so the launcher runs on the official client with its HTTP layer (urllib3)
recorded: each request is checked as the client sends it (method, path, query, content type, body), and
each test states the API's answers, in the shapes of the Kubernetes API reference, which the client
deserialises into its models. Nothing here plays a cluster: what a real API server, the Job controller,
the scheduler, DNS and the garbage collector do stays untested. Every recorded request must be allowed by
infra/k8s/training/rbac.yaml, and every rule there must be used.
"""

from __future__ import annotations

import copy
import importlib
import io
import json
import os
import re
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
import yaml

from loopline.config import LifecycleConfig, load_config
from loopline.errors import ConfigError, WaitTimeoutError
from loopline.storage.lake import Lake
from loopline.train.k8s_manifests import LauncherSettings, plan_launch
from loopline.train.runkey import code_version, compute_run_key
from loopline.train.topology import resolve_topology

REPO = Path(__file__).resolve().parents[2]
KUBERNETES_VERSION = "1.33.0"
RUN_KEY = "0f1e2d3c4b5a6978"
FLOW_RUN = "5b0e7d7e-0f6c-4a3e-9a51-2f4f3c9d0b11"
NS = "loopline"
LAKE = Lake(
    root="s3://loopline/lake",
    endpoint_url="http://minio:9000",
    region="us-east-1",
    access_key_id="AKIA-TEST",
    secret_access_key="do-not-leak",
)


def need(module: str):
    """A dev dependency: skipped where it is missing, a failure under CI=true."""
    try:
        return importlib.import_module(module)
    except ImportError:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"{module} is not installed (pip install the dev dependencies)")


def plan(launcher: str = "kubernetes", nodes: int = 2, devices: int = 4, **training):
    cfg = LifecycleConfig.model_validate(
        {"training": {"launcher": launcher, "nodes": nodes, "devices": devices, **training}}
    )
    run_key = compute_run_key(
        cfg.training, dataset="credit", model_name="credit", features_version=7, code=code_version()
    )
    return cfg, plan_launch(
        cfg,
        dataset="credit",
        model_name="credit",
        features_version=7,
        run_key=run_key,
        lake=LAKE,
        settings=LauncherSettings.from_env({}),
        flow_run_id=FLOW_RUN,
    )


# --- manifests ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("nodes", [1, 2, 8])
def test_indexed_job_service_and_configmap_validate_and_meet_at_node_0(nodes, tmp_path):
    kv = need("kubernetes_validate")
    cfg, p = plan("kubernetes", nodes)
    job, configmap, service = p.manifests
    for doc in p.manifests:
        kv.validate(doc, KUBERNETES_VERSION, strict=True)
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", nodes, nodes)
    assert spec["suspend"] is True and spec["ttlSecondsAfterFinished"] == 86400
    # a preempted node restarts the job from the checkpoint: not counted; a user error fails it at once
    rules = spec["podFailurePolicy"]["rules"]
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in rules
    assert {
        "action": "FailJob",
        "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [2]},
    } in rules
    assert spec["backoffLimit"] == 3 * nodes and spec["podReplacementPolicy"] == "Failed"
    assert pod["restartPolicy"] == "Never" and pod["terminationGracePeriodSeconds"] == 180
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 4  # devices per pod; nodes x 4 in all
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert (
        shm["emptyDir"]["medium"] == "Memory"
        and {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    )
    assert "AKIA-TEST" not in json.dumps(p.manifests) and "do-not-leak" not in json.dumps(p.manifests)
    # the Service gives pod k the name <job>-k.<service>, and selects exactly the job's pods
    assert service["spec"]["clusterIP"] == "None" and pod["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["selector"].items() <= job["spec"]["template"]["metadata"]["labels"].items()
    for doc in p.manifests:  # cleanup and cancellation find everything by these
        assert doc["metadata"]["labels"]["loopline.dev/run-key"] == p.run_key
        assert doc["metadata"]["labels"]["loopline.dev/flow-run-id"] == FLOW_RUN
    assert pod_views(p, configmap, container["env"], tmp_path, host=f"{p.name}-0.{pod['subdomain']}") == nodes


@pytest.mark.parametrize("nodes", [1, 2, 8])
def test_trainjob_validates_against_the_vendored_crd_schema(nodes, tmp_path):
    kv, jsonschema = need("kubernetes_validate"), need("jsonschema")
    schema = json.loads((REPO / "infra/schemas/trainjob-v1alpha1.json").read_text())
    cfg, p = plan("kubeflow", nodes)
    trainjob, configmap = p.manifests
    jsonschema.validate(trainjob, schema)
    kv.validate(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": trainjob["metadata"]},
        KUBERNETES_VERSION,
        strict=True,
    )
    kv.validate(configmap, KUBERNETES_VERSION, strict=True)
    # the CRD's CEL rules, which no JSON schema runs
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", p.name) and len(p.name) <= 63
    assert not {e["name"] for e in trainjob["spec"]["trainer"]["env"]} & {
        "PET_NNODES",
        "PET_NODE_RANK",
        "PET_MASTER_ADDR",
    }
    trainer = trainjob["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"]) == (nodes, 4)
    bad = copy.deepcopy(trainjob)
    bad["spec"]["trainer"]["numNode"] = nodes  # strict: a misspelt field fails
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    assert pod_views(p, configmap, trainer["env"], tmp_path, host=f"{p.name}-node-0-0.{p.name}") == nodes


def pod_views(p, configmap, env: list[dict], tmp_path: Path, *, host: str) -> int:
    """Pod k's place in the run, computed as the pod computes it (Kubernetes sets JOB_COMPLETION_INDEX)."""
    config = tmp_path / "config.yaml"
    config.write_text(configmap["data"]["config.yaml"])
    pod_cfg = load_config(config)
    assert pod_cfg.training.launcher == "local"  # each pod is one node of the run
    key = compute_run_key(
        pod_cfg.training, dataset="credit", model_name="credit", features_version=7, code=code_version()
    )
    assert key == p.run_key  # the pods' run key is the flow's: same checkpoints, same rendezvous id
    plain = {e["name"]: e["value"] for e in env if "value" in e}
    assert plain["LOOPLINE_LAKE_URI"] == LAKE.root and "LOOPLINE_NODE_RANK" not in plain
    for k in range(p.nodes):
        topology = resolve_topology(pod_cfg.training, key, {**plain, "JOB_COMPLETION_INDEX": str(k)})
        assert topology.node_rank == k and topology.rdzv_id == f"loopline-{p.run_key}"
        if p.nodes > 1:
            assert topology.endpoint == f"{host}:29400"
    return p.nodes


def test_settings_and_refusals_name_what_to_change():
    with pytest.raises(ConfigError, match="LOOPLINE_K8S_TOLERATIONS"):
        LauncherSettings.from_env({"LOOPLINE_K8S_TOLERATIONS": "{not json"})
    cfg = LifecycleConfig.model_validate({"training": {"launcher": "kubernetes", "nodes": 2}})
    with pytest.raises(ConfigError, match="local folder"):
        plan_launch(
            cfg,
            dataset="d",
            model_name="d",
            features_version=1,
            run_key=RUN_KEY,
            lake=Lake(root="/tmp/lake"),
            settings=LauncherSettings.from_env({}),
        )
    _, cpu = plan("kubernetes", 2, device="cpu", mig_profile=None)
    assert "nodeSelector" not in cpu.owner["spec"]["template"]["spec"]
    assert cpu.owner["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":0.1.0")
    _, mig = plan("kubernetes", 2, devices=1, mig_profile="1g.10gb")
    assert (
        mig.owner["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"][
            "nvidia.com/mig-1g.10gb"
        ]
        == 1
    )


def test_fresh_is_refused_before_anything_starts():
    from tasks.training_k8s import train_on_kubernetes

    cfg = LifecycleConfig.model_validate({"training": {"launcher": "kubernetes", "nodes": 2}})
    with pytest.raises(ConfigError, match="--fresh"):
        train_on_kubernetes.fn(cfg, "credit", fresh=True)


# --- the API calls, recorded at the client's HTTP layer -------------------------------------------------


class Wire:
    """Stands in for the client's urllib3 pool: records each request and returns the answer the test
    states for its (method, path): a list consumed in order (its last entry repeats)."""

    def __init__(self, answers: dict):
        self.answers = {key: list(value) for key, value in answers.items()}
        self.calls: list[dict] = []

    def request(self, method, url, fields=None, body=None, headers=None, preload_content=True, **_):
        import urllib3

        parts = urlsplit(url)
        call = {
            "method": method,
            "path": parts.path,
            "query": dict(parse_qsl(parts.query + "&" + urlencode(fields or []))),
            "content_type": (headers or {}).get("Content-Type"),
            "body": json.loads(body) if body else None,
        }
        self.calls.append(call)
        queue = self.answers.get((method, parts.path))
        assert queue, f"unexpected request {method} {parts.path}"
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        status, payload = answer(call) if callable(answer) else answer
        data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        return urllib3.HTTPResponse(
            body=io.BytesIO(data),
            status=status,
            reason="x",
            preload_content=preload_content,
            headers={"Content-Type": "text/plain" if isinstance(payload, str) else "application/json"},
        )

    def made(self) -> list[str]:
        return [f"{c['method']} {c['path'].rsplit('/namespaces/loopline/', 1)[-1]}" for c in self.calls]


def launcher_on(wire: Wire, **kw):
    client = need("kubernetes").client
    from loopline.train.k8s_launcher import KubernetesLauncher

    api = client.ApiClient(client.Configuration(host="https://kubernetes.test"))
    api.rest_client.pool_manager = wire
    clock = iter(range(0, 10**6, 5))  # 5 s per poll
    return KubernetesLauncher(api, NS, poll_seconds=5, sleep=lambda s: None, clock=lambda: next(clock), **kw)


def created(call):
    return 201, {
        **call["body"],
        "metadata": {**call["body"]["metadata"], "uid": "c0ffee00-0000-4000-8000-000000000001"},
    }


def with_status(manifest: dict, status: dict, suspend: bool = False) -> dict:
    doc = copy.deepcopy(manifest)
    doc["metadata"]["uid"] = "c0ffee00-0000-4000-8000-000000000001"
    doc["spec"]["suspend"] = suspend
    return (200, {**doc, "status": status})


def condition(kind: str, reason: str = "", message: str = "") -> dict:
    return {
        "type": kind,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastProbeTime": "2026-11-26T10:05:00Z",
        "lastTransitionTime": "2026-11-26T10:05:00Z",
    }


def pod(
    p,
    index: int,
    phase: str,
    *,
    container: str = "trainer",
    state: dict | None = None,
    since: str = "10:00:00",
    scheduled: dict | None = None,
) -> dict:
    state = state or (
        {"running": {"startedAt": f"2026-11-26T{since}Z"}}
        if phase == "Running"
        else {"waiting": {"reason": "ContainerCreating"}}
    )
    return {
        "metadata": {
            "name": f"{p.name}-{index}-x{index}z",
            "namespace": NS,
            "creationTimestamp": f"2026-11-26T{since}Z",
            "labels": {"loopline.dev/training-job": p.name},
            "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
        },
        "status": {
            "phase": phase,
            "conditions": [scheduled] if scheduled else [],
            "containerStatuses": [
                {
                    "name": container,
                    "image": "img",
                    "imageID": "",
                    "ready": phase == "Running",
                    "restartCount": 0,
                    "state": state,
                }
            ],
        },
    }


def pods(*items) -> tuple[int, dict]:
    return 200, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": list(items)}


DELETED = (200, {"apiVersion": "v1", "kind": "Status", "status": "Success", "metadata": {}})
SERVICE_UNAVAILABLE = (
    503,
    {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "ServiceUnavailable", "code": 503},
)


def progress_log(*steps: int) -> str:
    return "".join(
        f"2026-11-26T10:01:{s:02d}.5Z {json.dumps({'progress': {'step': s, 'total_steps': 30}})}\n"
        for s in steps
    )


RESULT = {
    "model_uri": "models:/credit/3",
    "model_version": "3",
    "run_key": "k",
    "steps": 30,
    "state_sha256": "ab",
}


def job_paths(p) -> dict[str, str]:
    base = "/apis/batch/v1/namespaces/loopline/jobs"
    return {
        "jobs": base,
        "job": f"{base}/{p.name}",
        "cm": "/api/v1/namespaces/loopline/configmaps",
        "svc": "/api/v1/namespaces/loopline/services",
        "pods": "/api/v1/namespaces/loopline/pods",
        "log0": f"/api/v1/namespaces/loopline/pods/{p.name}-0-x0z/log",
    }


def run_job_to_completion():
    _, p = plan("kubernetes", 2)
    path = job_paths(p)
    unschedulable = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
    }
    wire = Wire(
        {
            ("POST", path["jobs"]): [created],
            ("POST", path["cm"]): [created],
            ("POST", path["svc"]): [created],
            ("PATCH", path["job"]): [with_status(p.owner, {})],
            # a 503 on the way (an API server restarting) is ridden out
            ("GET", path["job"]): [with_status(p.owner, {"active": 2}), SERVICE_UNAVAILABLE]
            + [with_status(p.owner, {"active": 2})] * 2
            + [
                with_status(
                    p.owner,
                    {
                        "succeeded": 2,
                        "conditions": [
                            condition("SuccessCriteriaMet", "CompletionsReached"),
                            condition("Complete", "CompletionsReached"),
                        ],
                    },
                )
            ],
            ("GET", path["pods"]): [
                pods(pod(p, 0, "Pending"), pod(p, 1, "Pending", scheduled=unschedulable)),
                pods(pod(p, 0, "Running"), pod(p, 1, "Running")),
                pods(pod(p, 0, "Running"), pod(p, 1, "Running")),
                pods(pod(p, 0, "Succeeded", state={"terminated": {"exitCode": 0}}), pod(p, 1, "Succeeded")),
            ],
            # the log is read again from its tail: lines already passed on must not be passed on twice
            ("GET", path["log0"]): [
                (200, progress_log(10)),
                (200, progress_log(10, 20)),
                (200, progress_log(10, 20, 30)),
                (200, "training done\n" + json.dumps(RESULT) + "\n"),
            ],
            ("DELETE", f"{path['job']}"): [DELETED],
            ("DELETE", f"{path['svc']}/{p.name}"): [DELETED],
            ("DELETE", f"{path['cm']}/{p.name}"): [DELETED],
        }
    )
    seen, statuses = [], []
    result = launcher_on(wire).run(p, on_progress=seen.append, on_status=statuses.append)
    return p, wire, result, seen, statuses


def test_a_job_is_created_suspended_followed_and_deleted():
    p, wire, result, seen, statuses = run_job_to_completion()
    assert result == RESULT
    assert [s["step"] for s in seen] == [10, 20, 30]
    assert (
        statuses[0]
        == (
            "0/2 nodes running: node 0 pending; node 1 pending (Unschedulable: 0/3 nodes are available: 3 "
            "Insufficient nvidia.com/gpu.)"
        )
        and statuses[1] == "2/2 nodes running"
    )
    name = p.name
    assert wire.made()[:4] == ["POST jobs", "POST configmaps", "POST services", f"PATCH jobs/{name}"]
    assert wire.made()[-3:] == [f"DELETE jobs/{name}", f"DELETE services/{name}", f"DELETE configmaps/{name}"]
    job, configmap, service, resume = wire.calls[:4]
    assert job["body"] == p.owner and job["body"]["spec"]["suspend"] is True  # the validated manifest, as is
    owner_ref = [
        {"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": "c0ffee00-0000-4000-8000-000000000001"}
    ]
    for call, manifest in ((configmap, p.manifests[1]), (service, p.manifests[2])):
        assert call["body"] == {
            **manifest,
            "metadata": {**manifest["metadata"], "ownerReferences": owner_ref},
        }
    assert (resume["content_type"], resume["body"]) == (
        "application/merge-patch+json",
        {"spec": {"suspend": False}},
    )
    assert wire.calls[-3]["query"] == {"propagationPolicy": "Foreground"}
    logs = [c for c in wire.calls if c["path"].endswith("/log")]
    # as urllib3 encodes it; the API server's ParseBool takes "True"
    assert logs[0]["query"] == {"container": "trainer", "timestamps": "True", "tailLines": "200"}
    assert {c["query"]["labelSelector"] for c in wire.calls if c["path"].endswith("/pods")} == {
        f"loopline.dev/training-job={name}"
    }


def test_a_retry_follows_the_running_job_of_its_run_key():
    _, p = plan("kubernetes", 2)
    path = job_paths(p)
    running = with_status(p.owner, {"active": 2})
    running[1]["metadata"]["labels"]["loopline.dev/flow-run-id"] = "an-earlier-flow-run"
    exists = (
        409,
        {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "AlreadyExists", "code": 409},
    )
    wire = Wire(
        {
            ("POST", path["jobs"]): [exists],
            ("GET", path["job"]): [running],
            ("PATCH", path["job"]): [running],
            ("POST", path["cm"]): [exists],
            ("POST", path["svc"]): [exists],
        }
    )
    launcher_on(wire).launch(p)
    assert wire.made() == [
        "POST jobs",
        f"GET jobs/{p.name}",
        f"PATCH jobs/{p.name}",
        "POST configmaps",
        "POST services",
    ]
    relabel = wire.calls[2]  # this flow run's cancellation must find the job; no second job, no resume patch
    assert relabel["body"] == {"metadata": {"labels": {"loopline.dev/flow-run-id": FLOW_RUN}}}
    assert relabel["content_type"] == "application/merge-patch+json"


@pytest.mark.parametrize("exit_code", [2, 1])
def test_a_failed_job_says_why_and_stays_for_its_logs(exit_code):
    from loopline.train.k8s_launcher import TrainingJobFailed, TrainingJobRefused

    _, p = plan("kubernetes", 2)
    path = job_paths(p)
    reason = (
        (
            "PodFailurePolicy",
            "Container trainer for pod ... failed with exit code 2 matching FailJob rule at index 0",
        )
        if exit_code == 2
        else ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
    )
    failed = with_status(
        p.owner,
        {"failed": 2, "conditions": [condition("FailureTarget", *reason), condition("Failed", *reason)]},
    )
    dead = {"terminated": {"exitCode": exit_code, "reason": "Error", "finishedAt": "2026-11-26T10:03:00Z"}}
    tail = "Traceback ...\nerror: dataset 'credit' has no features yet\n" + json.dumps(
        {"error": "dataset 'credit' has no features yet", "type": "NotReadyError"}
    )
    wire = Wire(
        {
            ("GET", path["job"]): [failed],
            ("GET", path["pods"]): [pods(pod(p, 0, "Failed", state=dead), pod(p, 1, "Running"))],
            ("GET", path["log0"]): [(200, tail)],
        }
    )
    expected = TrainingJobRefused if exit_code == 2 else TrainingJobFailed
    with pytest.raises(expected, match=f"{reason[0]}.*exited {exit_code}") as caught:
        launcher_on(wire).follow(p)
    assert "has no features yet" in str(caught.value)
    assert not [c for c in wire.calls if c["method"] == "DELETE"]


def test_a_job_whose_pods_never_start_is_deleted_with_the_reason():
    _, p = plan("kubernetes", 2)
    path = job_paths(p)
    pulling = {
        "waiting": {
            "reason": "ImagePullBackOff",
            "message": 'Back-off pulling image "ghcr.io/loopline/loopline:0.1.0-cuda"',
        }
    }
    wire = Wire(
        {
            ("GET", path["job"]): [with_status(p.owner, {"active": 2})],
            ("GET", path["pods"]): [
                pods(pod(p, 0, "Pending", state=pulling), pod(p, 1, "Pending", state=pulling))
            ],
            ("DELETE", path["job"]): [DELETED],
            ("DELETE", f"{path['svc']}/{p.name}"): [DELETED],
            ("DELETE", f"{path['cm']}/{p.name}"): [DELETED],
        }
    )
    launcher = launcher_on(wire, startup_timeout_seconds=60)
    launcher.launch = lambda plan: None  # the job exists; this follows it from there
    with pytest.raises(WaitTimeoutError, match="ImagePullBackOff: Back-off pulling image"):
        launcher.run(p)
    assert wire.made()[-3:] == [
        f"DELETE jobs/{p.name}",
        f"DELETE services/{p.name}",
        f"DELETE configmaps/{p.name}",
    ]


def run_trainjob_to_completion():
    _, p = plan("kubeflow", 2)
    base = "/apis/trainer.kubeflow.org/v1alpha1/namespaces/loopline/trainjobs"
    path = job_paths(p)
    done = {
        "conditions": [
            {
                "type": "Complete",
                "status": "True",
                "reason": "JobsCompleted",
                "message": "",
                "lastTransitionTime": "2026-11-26T10:05:00Z",
            }
        ]
    }
    wire = Wire(
        {
            ("POST", base): [created],
            ("POST", path["cm"]): [created],
            ("PATCH", f"{base}/{p.name}"): [with_status(p.owner, {})],
            ("GET", f"{base}/{p.name}"): [with_status(p.owner, {}), with_status(p.owner, done)],
            ("GET", path["pods"]): [
                pods(pod(p, 0, "Running", container="node"), pod(p, 1, "Running", container="node"))
            ],
            ("GET", path["log0"]): [(200, progress_log(30)), (200, json.dumps(RESULT))],
            ("DELETE", f"{base}/{p.name}"): [DELETED],
            ("DELETE", f"{path['cm']}/{p.name}"): [DELETED],
        }
    )
    result = launcher_on(wire).run(p)
    return p, wire, result


def test_a_trainjob_is_created_suspended_followed_and_deleted():
    p, wire, result = run_trainjob_to_completion()
    assert result == RESULT
    name = p.name
    assert wire.made()[:3] == ["POST trainjobs", "POST configmaps", f"PATCH trainjobs/{name}"]
    assert wire.made()[-2:] == [f"DELETE trainjobs/{name}", f"DELETE configmaps/{name}"]
    assert wire.calls[0]["body"] == p.owner
    assert wire.calls[1]["body"]["metadata"]["ownerReferences"][0]["kind"] == "TrainJob"
    # named explicitly: older clients sent a strategic merge patch, which a custom resource refuses
    assert wire.calls[2]["content_type"] == "application/merge-patch+json"
    assert {c["query"]["container"] for c in wire.calls if c["path"].endswith("/log")} == {"node"}
    assert {c["query"]["labelSelector"] for c in wire.calls if c["path"].endswith("/pods")} == {
        f"jobset.sigs.k8s.io/jobset-name={name},jobset.sigs.k8s.io/replicatedjob-name=node"
    }


def cancel_a_flow_run(monkeypatch, tmp_path):
    """The train flow's on_cancellation hook, as Prefect calls it, with a kubeconfig for the test API."""
    need("kubernetes")

    from tasks.training_k8s import delete_training_jobs

    _, p = plan("kubernetes", 2)
    path = job_paths(p)
    base = "/apis/trainer.kubeflow.org/v1alpha1/namespaces/loopline/trainjobs"
    listed = {
        "apiVersion": "batch/v1",
        "kind": "JobList",
        "metadata": {},
        "items": [with_status(p.owner, {"active": 2})[1]],
    }
    no_crd = (
        404,
        {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404},
    )
    wire = Wire(
        {
            ("GET", path["jobs"]): [(200, listed)],
            ("GET", base): [no_crd],
            ("DELETE", path["job"]): [DELETED],
            ("DELETE", f"{path['svc']}/{p.name}"): [DELETED],
            ("DELETE", f"{path['cm']}/{p.name}"): [DELETED],
        }
    )
    use_test_api(wire, monkeypatch, tmp_path)

    class FlowRun:  # what Prefect hands a hook: the run's id and parameters
        id = FLOW_RUN
        parameters = {"config": {"training": {"launcher": "kubernetes", "nodes": 2}}}

    delete_training_jobs(None, FlowRun(), None)
    return p, wire


def use_test_api(wire: Wire, monkeypatch, tmp_path) -> None:
    """A kubeconfig naming the test API, and the client's urllib3 pools recorded by `wire` (for code that
    builds its own client: KubernetesLauncher.connect)."""
    import urllib3

    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "t",
        "clusters": [{"name": "t", "cluster": {"server": "https://kubernetes.test"}}],
        "users": [{"name": "t", "user": {"token": "test-token"}}],
        "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t"}}],
    }
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(kubeconfig))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    monkeypatch.setenv("LOOPLINE_K8S_NAMESPACE", NS)
    monkeypatch.setattr(urllib3.PoolManager, "request", lambda self, *a, **kw: wire.request(*a, **kw))


def test_cancelling_the_flow_run_deletes_its_job_service_and_configmap(monkeypatch, tmp_path):
    from flows.training import train_flow
    from tasks.training_k8s import delete_training_jobs

    assert train_flow.on_cancellation_hooks == [delete_training_jobs]
    p, wire = cancel_a_flow_run(monkeypatch, tmp_path)
    assert wire.made() == [
        "GET jobs",
        "GET trainjobs",
        f"DELETE jobs/{p.name}",
        f"DELETE services/{p.name}",
        f"DELETE configmaps/{p.name}",
    ]
    assert wire.calls[0]["query"]["labelSelector"] == f"loopline.dev/flow-run-id={FLOW_RUN}"
    assert wire.calls[0]["query"] == wire.calls[1]["query"]


def test_the_role_allows_every_call_the_launcher_makes_and_nothing_else(monkeypatch, tmp_path):
    kv = need("kubernetes_validate")
    docs = list(yaml.safe_load_all((REPO / "infra/k8s/training/rbac.yaml").read_text()))
    for doc in docs:
        kv.validate(doc, KUBERNETES_VERSION, strict=True)
    role = next(d for d in docs if d["kind"] == "Role")
    binding = next(d for d in docs if d["kind"] == "RoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "loopline-flow", "namespace": NS}]
    granted = {
        (g, r, v)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    calls = (
        run_job_to_completion()[1].calls
        + run_trainjob_to_completion()[1].calls
        + cancel_a_flow_run(monkeypatch, tmp_path)[1].calls
    )
    calls += [
        {"method": "GET", "path": f"/apis/batch/v1/namespaces/loopline/jobs/{plan()[1].name}", "query": {}}
    ]  # _adopt
    used = {rbac_request(c) for c in calls}
    assert used - granted == set()  # each call allowed
    assert granted - used == set()  # each grant used


def rbac_request(call: dict) -> tuple[str, str, str]:
    """(apiGroup, resource[/subresource], verb) of a namespaced request, as the API server authorises it."""
    parts = call["path"].strip("/").split("/")
    group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
    assert rest[:2] == ["namespaces", NS]
    resource, name, sub = (rest[2:] + [None, None])[:3]
    verb = {"POST": "create", "PATCH": "patch", "DELETE": "delete", "PUT": "update"}.get(call["method"])
    return group, f"{resource}/{sub}" if sub else resource, verb or ("get" if name else "list")


@pytest.mark.integration
def test_the_train_task_holds_nodes_x_devices_gpu_slots_while_its_job_runs(
    prefect_api, monkeypatch, tmp_path
):
    """The thin task on a real Prefect API (the Kubernetes API still recorded): the `gpu` limit holds
    nodes x devices slots from before the job is created until it is deleted, and the result announces."""
    from prefect import flow, get_client
    from prefect.runtime import flow_run

    from tasks.training_k8s import train_on_kubernetes

    limit = f"gpu-k8s-{os.getpid()}-{id(tmp_path) % 10**6}"
    cfg = LifecycleConfig.model_validate(
        {"training": {"launcher": "kubernetes", "nodes": 2, "devices": 4, "gpu_slot": limit}}
    )
    _, p = plan("kubernetes", 2)  # the same run key: nodes, devices and the slot's name are not part of it
    path = job_paths(p)
    held = []

    def slots_now(answer):
        def record(call):
            with get_client(sync_client=True) as client:
                held.append(client.read_global_concurrency_limit_by_name(limit).active_slots)
            return answer(call) if callable(answer) else answer

        return record

    done = {"conditions": [condition("Complete", "CompletionsReached")]}
    result = {
        **RESULT,
        "model_name": "credit",
        "run_id": "r1",
        "features_version": 7,
        "resumed_from_step": 0,
        "samples_per_s": 1.0,
        "device": "cuda",
        "run_key": p.run_key,
    }
    wire = Wire(
        {
            ("POST", path["jobs"]): [slots_now(created)],
            ("POST", path["cm"]): [created],
            ("POST", path["svc"]): [created],
            ("PATCH", path["job"]): [with_status(p.owner, {})],
            ("GET", path["job"]): [with_status(p.owner, done)],
            ("GET", path["pods"]): [pods(pod(p, 0, "Succeeded", state={"terminated": {"exitCode": 0}}))],
            ("GET", path["log0"]): [(200, progress_log(30)), (200, json.dumps(result))],
            ("DELETE", path["job"]): [slots_now(DELETED)],
            ("DELETE", f"{path['svc']}/{p.name}"): [DELETED],
            ("DELETE", f"{path['cm']}/{p.name}"): [DELETED],
        }
    )
    use_test_api(wire, monkeypatch, tmp_path)
    monkeypatch.setenv("LOOPLINE_LAKE_URI", LAKE.root)  # the pods' lake; the flow reads nothing there here
    monkeypatch.delenv("LOOPLINE_LAKE_BLOCK", raising=False)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # prefect fixes its settings at import, which may predate the fixture's PREFECT_API_URL
    @flow
    def train_here():
        return train_on_kubernetes(cfg, "credit", model_name="credit", features_version=7), flow_run.id

    with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
        trained, flow_run_id = train_here()
        with get_client(sync_client=True) as client:
            after = client.read_global_concurrency_limit_by_name(limit).active_slots
    assert held == [8, 8]  # while creating and while deleting: 2 nodes x 4 devices
    assert after == 0
    # the job carries the flow run's id: its cancellation finds it
    assert wire.calls[0]["body"]["metadata"]["labels"]["loopline.dev/flow-run-id"] == str(flow_run_id)
    assert trained["model_uri"] == RESULT["model_uri"] and trained["event_emitted"] is True
