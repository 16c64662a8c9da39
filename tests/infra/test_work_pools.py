"""The work-pool templates of infra/work-pools/ on a real Prefect server, rendered by the workers' own code.

Each test creates its pools under unique names (the session's `cpu` and `gpu` pools stay untouched). A
flow run of a deployment on the gpu pool gets the job variables that train_on_pool computes from the
training config; the server validates them against the pool's schema, and prefect-kubernetes' (or
prefect-docker's) job configuration renders the job exactly as its worker does before it submits it
(`resolve_for_flow_run`: the pool's template, the deployment's and the run's job variables,
`prepare_for_flow_run`). The Kubernetes Job must then validate, strictly, against Kubernetes 1.33.0.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import shlex
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from flows.work_pools import TEMPLATES_DIR, apply_work_pools, load_template
from loopline.config import TrainingConfig
from loopline.errors import ConfigError
from loopline.train.job_variables import pool_job_variables, training_job_variables

pytestmark = pytest.mark.integration

KUBERNETES_VERSION = "1.33.0"
# prefect-kubernetes 0.8.0 refuses a manifest without these PodSpec keys (worker._get_base_job_manifest);
# they are no PodSpec fields, and the API server drops them (fieldValidation defaults to Warn)
WORKER_REQUIRED_POD_KEYS = {"parallelism": 1, "completions": 1}


def need(module: str):
    """A dev dependency: skipped where it is missing, a failure under CI=true."""
    try:
        return importlib.import_module(module)
    except ImportError:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"{module} is not installed (pip install the dev dependencies)")


def declared(file: str) -> dict:
    return load_template(file)["variables"]["properties"]


# --- the job variables train_on_pool passes: pure ---------------------------------------------------


def test_only_the_variables_a_pool_declares_are_passed():
    ddp = training_job_variables(TrainingConfig(devices=2))
    assert ddp == {"gpu_limit": 2, "gpu_resource": "nvidia.com/gpu"}
    assert pool_job_variables(ddp, declared("process.json")) == {}  # `loopline up`'s pools keep working
    assert pool_job_variables(ddp, declared("kubernetes-cpu.json")) == {}
    assert pool_job_variables(ddp, declared("docker.json")) == {}
    assert pool_job_variables(ddp, declared("kubernetes-gpu.json")) == {"gpu_limit": 2}
    assert pool_job_variables(ddp, declared("docker-gpu.json")) == {"gpu_limit": 2}

    mig = training_job_variables(TrainingConfig(mig_profile="2g.20gb"))
    assert pool_job_variables(mig, declared("kubernetes-gpu-mig.json")) == {
        "resource_limits": {"nvidia.com/mig-2g.20gb": 1, "memory": "16Gi"}  # the pool's memory limit stays
    }
    assert pool_job_variables(mig, declared("process.json")) == {}
    # whole GPUs on the MIG pool replace its default slice
    assert pool_job_variables(ddp, declared("kubernetes-gpu-mig.json")) == {
        "resource_limits": {"nvidia.com/gpu": 2, "memory": "16Gi"}
    }
    # a CPU training, or a flow that launches the nodes as pods of their own, holds no GPU
    for idle in (TrainingConfig(device="cpu", devices=2), TrainingConfig(devices=2, launcher="kubernetes")):
        assert pool_job_variables(training_job_variables(idle), declared("kubernetes-gpu.json")) == {
            "gpu_limit": 0
        }


def test_a_mig_profile_the_pool_cannot_express_is_a_clear_error():
    mig = training_job_variables(TrainingConfig(mig_profile="1g.10gb"))
    with pytest.raises(ConfigError, match=r"nvidia.com/mig-1g.10gb.*'gpu-a100'.*kubernetes-gpu-mig.json"):
        pool_job_variables(mig, declared("kubernetes-gpu.json"), "gpu-a100")
    with pytest.raises(ConfigError, match="training.devices=1"):
        training_job_variables(TrainingConfig(mig_profile="1g.10gb", devices=2))


# --- real Prefect server ----------------------------------------------------------------------------


@pytest.fixture
def client(prefect_api):
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # prefect fixes its settings at import, which may predate the fixture's PREFECT_API_URL
    with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
        with get_client(sync_client=True) as c:
            yield c


@pytest.fixture
def pool_names(client):
    names = (f"cpu-{uuid.uuid4().hex[:8]}", f"gpu-{uuid.uuid4().hex[:8]}")
    yield names
    for name in names:
        try:
            client.delete_work_pool(name)
        except Exception:
            pass


def render(client, job_configuration_class, pool_name: str, training: TrainingConfig | None):
    """A deployment on `pool_name`, a flow run with the job variables train_on_pool computes for
    `training` (None: none, as for the cpu pool), and the job configuration its worker would submit."""
    from prefect.client.orchestration import get_client

    from tasks.retrain import training_pool_job_variables

    job_variables = {}
    if training is not None:
        job_variables = training_pool_job_variables(client, pool_name, _lifecycle(training))
    flow_id = client.create_flow_from_name("train")
    deployment_id = client.create_deployment(flow_id=flow_id, name=pool_name, work_pool_name=pool_name)
    run = client.create_flow_run_from_deployment(deployment_id, job_variables=job_variables)

    async def resolve():
        async with get_client() as async_client:
            return await job_configuration_class.resolve_for_flow_run(
                run,
                client=async_client,
                work_pool=await async_client.read_work_pool(pool_name),
                worker_name="test-worker",
            )

    return asyncio.run(resolve()), job_variables


def _lifecycle(training: TrainingConfig):
    from loopline.config import LifecycleConfig

    return LifecycleConfig(training=training)


def validate_job(manifest: dict) -> None:
    """Strict batch/v1 Job validation; the two keys the worker insists on are the only unknown fields."""
    kubernetes_validate = need("kubernetes_validate")
    pod = manifest["spec"]["template"]["spec"]
    assert {k: pod.get(k) for k in WORKER_REQUIRED_POD_KEYS} == WORKER_REQUIRED_POD_KEYS
    with pytest.raises(kubernetes_validate.ValidationError) as err:
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    assert set(err.value.instance) >= set(WORKER_REQUIRED_POD_KEYS) and err.value.validator in (
        "additionalProperties",
        "unevaluatedProperties",
    )
    stripped = json.loads(json.dumps(manifest))
    for key in WORKER_REQUIRED_POD_KEYS:
        del stripped["spec"]["template"]["spec"][key]
    kubernetes_validate.validate(stripped, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize(
    ("pool_type", "training", "resource", "count"),
    [
        ("kubernetes", TrainingConfig(devices=2), "nvidia.com/gpu", 2),
        ("kubernetes-mig", TrainingConfig(mig_profile="1g.10gb"), "nvidia.com/mig-1g.10gb", 1),
    ],
    ids=["gpu-devices-2", "mig-1g.10gb"],
)
def test_kubernetes_pools_render_jobs_that_validate(client, pool_names, pool_type, training, resource, count):
    need("prefect_kubernetes")
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    from loopline.train.ddp import TERMINATE_GRACE_SECONDS

    cpu_pool, gpu_pool = pool_names
    assert apply_work_pools(client, pool_type, pool_names) == list(pool_names)
    gpu_file = "kubernetes-gpu.json" if pool_type == "kubernetes" else "kubernetes-gpu-mig.json"
    for name, file in ((cpu_pool, "kubernetes-cpu.json"), (gpu_pool, gpu_file)):
        pool = client.read_work_pool(name)
        assert pool.type == "kubernetes" and pool.base_job_template == load_template(file)

    config, job_variables = render(client, KubernetesWorkerJobConfiguration, gpu_pool, training)
    job = config.job_manifest
    validate_job(job)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["name"] == "prefect-job" and pod["restartPolicy"] == "Never"
    assert job["spec"]["parallelism"] == job["spec"]["completions"] == 1 and job["spec"]["backoffLimit"] == 0
    assert container["resources"]["limits"][resource] == count
    assert [k for k in container["resources"]["limits"] if k.startswith("nvidia.com/")] == [resource]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}} in pod["volumes"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["nodeSelector"]["nvidia.com/gpu.present"] == "true"
    assert pod["terminationGracePeriodSeconds"] > TERMINATE_GRACE_SECONDS  # torchrun's own checkpoint budget
    assert container["image"] == "ghcr.io/loopline/loopline:0.1.0-cuda"
    assert pod["serviceAccountName"] == "loopline-flow" and job["metadata"]["namespace"] == "loopline"
    assert container["args"] == ["prefect", "flow-run", "execute"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PREFECT__FLOW_RUN_ID"] == str(config.labels["prefect.io/flow-run-id"])
    assert job_variables  # the GPU request travelled as job variables, not as template defaults
    if pool_type == "kubernetes":
        assert container["resources"]["requests"][resource] == count

    cpu_config, _ = render(client, KubernetesWorkerJobConfiguration, cpu_pool, None)
    validate_job(cpu_config.job_manifest)
    (cpu_container,) = cpu_config.job_manifest["spec"]["template"]["spec"]["containers"]
    assert (
        cpu_container["name"] == "prefect-job" and cpu_container["image"] == "ghcr.io/loopline/loopline:0.1.0"
    )
    assert not any(k.startswith("nvidia.com/") for k in cpu_container["resources"]["limits"])


def test_docker_pools_are_accepted_and_render(client, pool_names):
    need("prefect_docker")
    from docker.types import HostConfig
    from prefect_docker.worker import DockerWorkerJobConfiguration

    cpu_pool, gpu_pool = pool_names
    apply_work_pools(client, "docker", pool_names)
    assert client.read_work_pool(gpu_pool).type == "docker"

    config, _ = render(client, DockerWorkerJobConfiguration, gpu_pool, TrainingConfig(devices=2))
    assert config.image == "ghcr.io/loopline/loopline:0.1.0-cuda"
    assert config.command == "prefect flow-run execute" and config.env["PREFECT__FLOW_RUN_ID"]
    # docker-py turns the kwargs into the API's HostConfig, as `docker run --gpus 2 --shm-size 8g` would
    host = HostConfig(version="1.44", **config.container_create_kwargs)
    assert host["ShmSize"] == 8 * 1024**3
    assert [(r["Driver"], r["Count"], r["Capabilities"]) for r in host["DeviceRequests"]] == [
        ("nvidia", 2, [["gpu"]])
    ]

    cpu_config, _ = render(client, DockerWorkerJobConfiguration, cpu_pool, None)
    assert "device_requests" not in cpu_config.container_create_kwargs
    assert cpu_config.image == "ghcr.io/loopline/loopline:0.1.0"


def test_apply_work_pools_is_idempotent_and_refuses_a_type_change(client, pool_names):
    from prefect.client.schemas.actions import WorkPoolUpdate

    cpu_pool, gpu_pool = pool_names
    apply_work_pools(client, "process", pool_names)
    client.update_work_pool(gpu_pool, WorkPoolUpdate(base_job_template={}))  # drifted by hand
    apply_work_pools(client, "process", pool_names)  # again: no error, the template is back
    assert client.read_work_pool(gpu_pool).base_job_template == load_template("process.json")
    with pytest.raises(ConfigError, match=rf"{cpu_pool}.*'process', not 'kubernetes'.*work-pool delete"):
        apply_work_pools(client, "kubernetes", pool_names)
    with pytest.raises(ConfigError, match="unknown pool type 'k8s'"):
        apply_work_pools(client, "k8s", pool_names)


def test_every_template_is_used():
    """Each file in infra/work-pools/ is one of apply_work_pools' templates (and so tested above)."""
    from flows.work_pools import POOL_TYPES

    used = {file for _, *files in POOL_TYPES.values() for file in files}
    assert {p.name for p in TEMPLATES_DIR.glob("*.json")} == used


def test_the_readme_commands_create_what_apply_work_pools_creates(client, pool_names):
    """The README's `prefect work-pool create` lines name the same pools, types and templates as
    apply_work_pools, and one of them, run as written, creates that pool."""
    from flows.work_pools import POOL_TYPES

    block = (TEMPLATES_DIR / "README.md").read_text().split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [shlex.split(line) for line in block.splitlines() if line.startswith("prefect ")]
    documented = {(c[3], c[c.index("--type") + 1], c[c.index("--base-job-template") + 1]) for c in commands}
    expected = {
        (role, worker_type, f"infra/work-pools/{file}")
        for worker_type, *files in POOL_TYPES.values()
        for role, file in zip(("cpu", "gpu"), files, strict=True)
    }
    assert documented == expected
    (command,) = [c for c in commands if c[-2].endswith("/kubernetes-gpu.json")]
    command[3] = pool_names[1]
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-m", *command], cwd=repo, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    pool = client.read_work_pool(pool_names[1])
    assert pool.type == "kubernetes" and pool.base_job_template == load_template("kubernetes-gpu.json")
