"""The Kubernetes objects of one multi-node training, rendered from the templates in infra/k8s/training/.

`training.launcher: kubernetes` gives an Indexed Job (one pod per node, job.yaml), a headless Service (the
pods' DNS names, service.yaml) and a ConfigMap (the run's config, configmap.yaml); `kubeflow` gives a
Kubeflow Trainer TrainJob (trainjob.yaml) and the ConfigMap. Every pod runs the same command,
`python -m loopline.train --features-version V --config <the ConfigMap> --json --progress`, and finds its
place in the run as any node does (loopline.train.topology): its rank in JOB_COMPLETION_INDEX, which
Kubernetes sets in every pod of an Indexed Job (a TrainJob's JobSet runs one too); node 0's rendezvous in
LOOPLINE_RDZV_ENDPOINT (`<job>-0.<service>`, or the JobSet's `<job>-node-0-0.<job>`); the rendezvous id
`loopline-<run key>` from the run key, which the pods compute as the flow did (same dataset, features
version, config and code).

Nothing here calls the API (loopline.train.k8s_launcher does). The templates use Prefect's placeholder
syntax, `{{ name }}`: a value that is only a placeholder takes the value as it is (a number, a list, a
mapping), and an empty one (None, {}, []) drops its key; a placeholder inside text is text.
Settings of the cluster, not of the run, come from the environment of the flow (LauncherSettings).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from loopline.config import LifecycleConfig
from loopline.errors import ConfigError
from loopline.storage.lake import RESOLVED_ENV, Lake
from loopline.train.job_variables import training_job_variables
from loopline.train.topology import DEFAULT_RDZV_PORT

TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "infra" / "k8s" / "training"
TEMPLATES_ENV = "LOOPLINE_K8S_TEMPLATES"  # another folder of templates (an installed package has no infra/)
CONFIG_MOUNT = "/etc/loopline/run/config.yaml"  # where job.yaml / trainjob.yaml mount the ConfigMap
CONTAINER = {"kubernetes": "trainer", "kubeflow": "node"}  # the training container of each template
LABEL_JOB = "loopline.dev/training-job"
LABEL_RUN_KEY = "loopline.dev/run-key"
LABEL_FLOW_RUN = "loopline.dev/flow-run-id"
# the platform's settings a TrainJob names key by key (a Job takes the whole ConfigMap through envFrom)
CONFIG_KEYS = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_S3_ENDPOINT_URL",
    "LOOPLINE_HOME",
    "LOOPLINE_PUSHGATEWAY_URL",
    "MLFLOW_ENABLE_TELEMETRY",
    "DO_NOT_TRACK",
)
GPU_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_DROP = object()


def _env(name: str, default: Any, kind: type = str) -> Any:
    return field(default=default, metadata={"env": name, "kind": kind})


@dataclass(frozen=True)
class LauncherSettings:
    """Where and how the training pods run. Each field is read from the environment variable beside it
    (the platform's ConfigMap is the place for them); JSON for the mapping and the list."""

    namespace: str = _env("LOOPLINE_K8S_NAMESPACE", "")  # empty: the flow pod's own, else `loopline`
    image: str = _env("LOOPLINE_K8S_IMAGE", "ghcr.io/loopline/loopline:0.1.0-cuda")
    cpu_image: str = _env("LOOPLINE_K8S_CPU_IMAGE", "ghcr.io/loopline/loopline:0.1.0")  # device: cpu
    image_pull_policy: str = _env("LOOPLINE_K8S_IMAGE_PULL_POLICY", "IfNotPresent")
    service_account_name: str | None = _env("LOOPLINE_K8S_SERVICE_ACCOUNT", None)  # pods call no API
    # None: GPU nodes (the GPU Operator's label, the GPU taint) for a run on GPUs, anywhere for a CPU run
    node_selector: dict | None = _env("LOOPLINE_K8S_NODE_SELECTOR", None, dict)
    tolerations: list | None = _env("LOOPLINE_K8S_TOLERATIONS", None, list)
    cpu_request: str | None = _env("LOOPLINE_K8S_CPU_REQUEST", "4")
    memory: str | None = _env("LOOPLINE_K8S_MEMORY", "32Gi")  # request and limit; /dev/shm counts in it
    shm_size_limit: str = _env("LOOPLINE_K8S_SHM_SIZE", "8Gi")
    # SIGTERM -> SIGKILL: the ranks agree on a step, rank 0 checkpoints to the lake (as the gpu pool's 180 s)
    termination_grace_period_seconds: int = _env("LOOPLINE_K8S_TERMINATION_GRACE_SECONDS", 180, int)
    restarts: int = _env("LOOPLINE_K8S_RESTARTS", 3, int)  # whole-job restarts from the checkpoint
    active_deadline_seconds: int | None = _env("LOOPLINE_K8S_ACTIVE_DEADLINE_SECONDS", None, int)
    ttl_seconds_after_finished: int = _env("LOOPLINE_K8S_TTL_SECONDS", 86400, int)  # a failed job's logs
    kubeflow_runtime: str = _env("LOOPLINE_K8S_KUBEFLOW_RUNTIME", "torch-distributed")
    rendezvous_port: int = _env("LOOPLINE_K8S_RENDEZVOUS_PORT", DEFAULT_RDZV_PORT, int)
    poll_seconds: float = _env("LOOPLINE_K8S_POLL_SECONDS", 5.0, float)
    # no pod running after this long (no GPU node free, an image that does not pull): give up, delete the job
    startup_timeout_seconds: float = _env("LOOPLINE_K8S_STARTUP_TIMEOUT_SECONDS", 3600.0, float)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> LauncherSettings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name, kind = f.metadata["env"], f.metadata["kind"]
            raw = (env.get(name) or "").strip()
            if not raw:
                continue
            try:
                value = json.loads(raw) if kind in (dict, list) else kind(raw)
            except ValueError:
                value = None
            if not isinstance(value, kind):
                raise ConfigError(f"environment variable {name}={raw!r}: expected {kind.__name__}")
            values[f.name] = value
        settings = cls(**values)
        if not settings.namespace:
            settings = dataclasses.replace(settings, namespace=_own_namespace() or "loopline")
        return settings


def _own_namespace() -> str | None:
    """The namespace of the pod this runs in (a flow-run pod of the Kubernetes work pool)."""
    path = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    return path.read_text().strip() if path.exists() else None


@dataclass(frozen=True)
class LaunchPlan:
    """One training's objects, in the order the launcher creates them: the owner (Job or TrainJob)
    first, created suspended; then the objects it owns (their ownerReferences get its uid)."""

    launcher: str
    name: str
    namespace: str
    run_key: str
    nodes: int
    devices: int
    gpus_per_node: int
    manifests: list[dict]

    @property
    def owner(self) -> dict:
        return self.manifests[0]

    @property
    def owned(self) -> list[dict]:
        return self.manifests[1:]

    @property
    def container(self) -> str:
        return CONTAINER[self.launcher]

    @property
    def pod_selector(self) -> str:
        """The training's pods: ours by our label; a TrainJob's by the labels JobSet sets on every pod of
        its `node` job (ours reach them too, through the runtime patch, but JobSet's need nothing from us)."""
        if self.launcher == "kubeflow":
            return f"jobset.sigs.k8s.io/jobset-name={self.name},jobset.sigs.k8s.io/replicatedjob-name=node"
        return f"{LABEL_JOB}={self.name}"


def job_name(model_name: str, run_key: str) -> str:
    """`train-<model>-<run key>`: an RFC 1035 label short enough for the pods' hostnames
    (`<name>-<rank>`, a TrainJob's `<name>-node-0-<rank>`). The run key makes it the same for every
    attempt of a run: a retry finds the job that is still running instead of starting a second one."""
    model = re.sub(r"[^a-z0-9-]+", "-", model_name.lower()).strip("-")[:28].strip("-") or "model"
    return f"train-{model}-{run_key[:12]}"


def plan_launch(
    cfg: LifecycleConfig,
    *,
    dataset: str,
    model_name: str,
    features_version: int,
    run_key: str,
    lake: Lake,
    settings: LauncherSettings,
    flow_run_id: str | None = None,
) -> LaunchPlan:
    """Render the objects of `cfg.training.launcher` for this run (module docstring)."""
    tcfg = cfg.training
    if tcfg.launcher not in CONTAINER:
        raise ConfigError(
            f"training.launcher is {tcfg.launcher!r}: the Kubernetes launcher runs 'kubernetes' or 'kubeflow'"
        )
    if not lake.is_s3:
        raise ConfigError(
            f"training.launcher is {tcfg.launcher!r} but the lake is the local folder {lake.root}: the "
            "training pods on other machines read the features and write the checkpoints there. Use a lake "
            "on S3 (LOOPLINE_LAKE_URI=s3://..., or a LakeStorage block)"
        )
    # GPUs per pod and their resource name (a MIG slice or a GPU): what one node running locally asks for
    wanted = training_job_variables(tcfg.model_copy(update={"launcher": "local"}))
    gpus = int(wanted["gpu_limit"])
    name = job_name(model_name, run_key)
    endpoint_host = f"{name}-0.{name}" if tcfg.launcher == "kubernetes" else f"{name}-node-0-0.{name}"
    labels = {
        "app.kubernetes.io/name": "loopline-training",
        "app.kubernetes.io/part-of": "loopline",
        "app.kubernetes.io/managed-by": "loopline",
        LABEL_JOB: name,
        LABEL_RUN_KEY: run_key,
        "loopline.dev/model": re.sub(r"[^A-Za-z0-9_.-]+", "-", model_name)[:63].strip("-_.") or "model",
    }
    if flow_run_id:
        labels[LABEL_FLOW_RUN] = str(flow_run_id)
    values = {
        "name": name,
        "namespace": settings.namespace,
        "labels": labels,
        "annotations": {
            "loopline.dev/dataset": dataset,
            "loopline.dev/model-name": model_name,
            "loopline.dev/features-version": str(features_version),
        },
        "nodes": tcfg.nodes,
        "devices": tcfg.devices,
        "backoff_limit": tcfg.nodes * settings.restarts,
        "active_deadline_seconds": settings.active_deadline_seconds,
        "ttl_seconds_after_finished": settings.ttl_seconds_after_finished,
        "service_account_name": settings.service_account_name,
        "termination_grace_period_seconds": settings.termination_grace_period_seconds,
        "node_selector": _default(
            settings.node_selector, {"nvidia.com/gpu.present": "true"} if gpus else None
        ),
        "tolerations": _default(settings.tolerations, GPU_TOLERATIONS if gpus else None),
        "image": settings.image if gpus else settings.cpu_image,
        "image_pull_policy": settings.image_pull_policy,
        "command": pod_command(dataset, model_name, features_version),
        "env": pod_env(lake, f"{endpoint_host}:{settings.rendezvous_port}", tcfg.launcher),
        "resources": _resources(wanted["gpu_resource"], gpus, settings),
        "shm_size_limit": settings.shm_size_limit,
        "rendezvous_port": settings.rendezvous_port,
        "kubeflow_runtime": settings.kubeflow_runtime,
        "owner_references": None,  # filled by the launcher once the owner exists (its uid)
        "config_yaml": pod_config_yaml(cfg, model_name),
    }
    files = (
        ("job.yaml", "configmap.yaml", "service.yaml")
        if tcfg.launcher == "kubernetes"
        else ("trainjob.yaml", "configmap.yaml")
    )
    manifests = [render_template(load_template(f), values) for f in files]
    return LaunchPlan(
        tcfg.launcher, name, settings.namespace, run_key, tcfg.nodes, tcfg.devices, gpus, manifests
    )


def latest_features_version(lake: Lake, dataset: str) -> int:
    """The Delta version of features/D the job will train on (the flow pins it for every node)."""
    from loopline.errors import NotReadyError
    from loopline.storage import delta

    version = delta.table_version(lake, lake.table_uri("features", dataset))
    if version is None:
        raise NotReadyError(
            f"dataset {dataset!r} has no features yet: run `loopline features --dataset {dataset}`"
        )
    return version


def pod_command(dataset: str, model_name: str, features_version: int) -> list[str]:
    """Every node's command. The features version is pinned: all nodes (and every restart) train on the
    same rows, under the same run key. No --fresh: a replaced pod would wipe what the run wrote so far."""
    return [
        "python",
        "-m",
        "loopline.train",
        "--dataset",
        dataset,
        "--model",
        model_name,
        "--features-version",
        str(features_version),
        "--config",
        CONFIG_MOUNT,
        "--json",  # the last line of node 0's log is the result
        "--progress",  # a {"progress": ...} line per report, which the launcher follows
    ]


def pod_env(lake: Lake, endpoint: str, launcher: str) -> list[dict]:
    """The pod's own variables. The flow's lake (its root and endpoint: no credentials, those come from
    the loopline-s3 Secret) so that pods and flow read the same tables; node 0's rendezvous endpoint.
    A TrainJob takes no envFrom: it names the platform's settings and Secrets key by key."""
    env = [{"name": "PYTHONUNBUFFERED", "value": "1"}, {"name": "LOOPLINE_RDZV_ENDPOINT", "value": endpoint}]
    # not the keys (the pods take the loopline-s3 Secret's), not the marker of a resolved LakeStorage block
    secret = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", RESOLVED_ENV)
    public = {k: v for k, v in lake.environment().items() if k not in secret}
    env += [{"name": k, "value": v} for k, v in sorted(public.items())]
    if launcher == "kubeflow":
        mlflow_secret = _has_credentials(os.environ.get("MLFLOW_TRACKING_URI", ""))
        for key in CONFIG_KEYS:
            if key == "MLFLOW_TRACKING_URI" and mlflow_secret:
                ref = {"secretKeyRef": {"name": "loopline-mlflow", "key": key}}
            else:
                ref = {"configMapKeyRef": {"name": "loopline-config", "key": key, "optional": True}}
            env.append({"name": key, "valueFrom": ref})
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": "loopline-s3", "key": key}}})
    return env


def pod_config_yaml(cfg: LifecycleConfig, model_name: str) -> str:
    """The config every pod loads: the flow's, where each pod is one node of the run (launcher local; rank
    and endpoint from its environment) and LOOPLINE_HOME is the pod's own."""
    training = cfg.training.model_copy(update={"launcher": "local", "node_rank": None, "rdzv_endpoint": None})
    data = cfg.model_copy(update={"training": training, "model_name": model_name}).model_dump(mode="json")
    data.pop("home", None)
    return yaml.safe_dump(data, sort_keys=False)


def _resources(gpu_resource: str, gpus: int, settings: LauncherSettings) -> dict:
    limits: dict[str, Any] = {gpu_resource: gpus} if gpus else {}
    requests: dict[str, Any] = {}
    if settings.cpu_request:
        requests["cpu"] = settings.cpu_request
    if settings.memory:
        requests["memory"] = limits["memory"] = settings.memory
    return {k: v for k, v in (("limits", limits), ("requests", requests)) if v}


def _default(value: Any, fallback: Any) -> Any:
    return fallback if value is None else value


def _has_credentials(uri: str) -> bool:
    from urllib.parse import urlsplit

    return "@" in (urlsplit(uri).netloc if "://" in uri else "")


def load_template(file: str) -> Any:
    folder = Path(os.environ.get(TEMPLATES_ENV) or TEMPLATES_DIR)
    path = folder / file
    if not path.exists():
        raise ConfigError(
            f"the training template {path} does not exist: run from the project checkout (the image has it "
            f"at /opt/loopline) or point {TEMPLATES_ENV} at a copy of infra/k8s/training"
        )
    return yaml.safe_load(path.read_text())


def render_template(node: Any, values: dict[str, Any]) -> Any:
    """Fill the `{{ name }}` placeholders of a loaded template (module docstring). An unknown name is a
    ValueError naming it: a template and this code that disagree must fail before anything is created."""
    out = _render(node, values)
    return None if out is _DROP else out


def _render(node: Any, values: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        items = ((k, _render(v, values)) for k, v in node.items())
        return {k: v for k, v in items if v is not _DROP}
    if isinstance(node, list):
        return [v for v in (_render(item, values) for item in node) if v is not _DROP]
    if not isinstance(node, str) or "{{" not in node:
        return node
    whole = _PLACEHOLDER.fullmatch(node.strip())
    if whole:
        value = _value(whole.group(1), values)
        return _DROP if value is None or value == {} or value == [] else copy.deepcopy(value)
    return _PLACEHOLDER.sub(lambda m: str(_value(m.group(1), values)), node)


def _value(name: str, values: dict[str, Any]) -> Any:
    if name not in values:
        raise ValueError(
            f"template placeholder {{{{ {name} }}}} has no value (known: {', '.join(sorted(values))})"
        )
    return values[name]
