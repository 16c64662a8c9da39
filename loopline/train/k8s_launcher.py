"""Start, follow and clean up a multi-node training on Kubernetes (training.launcher kubernetes | kubeflow).

A Prefect Kubernetes work pool runs one pod per flow run, so the train flow (on the cpu pool: it asks for
no GPU itself) creates the training's own pods: it renders the run's objects (loopline.train.k8s_manifests),
creates the owner (Indexed Job or TrainJob) suspended, then the Service and ConfigMap it owns, then resumes
it; follows the pods until the job ends, passing node 0's progress lines on; returns node 0's result line
(`python -m loopline.train --json`); and deletes what it created. A cancelled flow run deletes them from
its on_cancellation hook (`delete_for_flow_run`, by the flow-run label every object carries).

Creation is idempotent per run key: the job is named after it, so a retry of the task or of the flow
follows the job that is still running instead of starting a second one on the same checkpoints. A job of
the key that has already ended is deleted (with its pods) and created again: it resumes from the
checkpoint in the lake, or returns the registered result at once when the run had finished.

Every call is one that infra/k8s/training/rbac.yaml allows, and that Role allows nothing else:
jobs create/get/list/patch/delete, trainjobs the same, services and configmaps create/delete, pods list,
pods/log get. Patches are JSON merge patches, named explicitly (the client's default for a Job is a strategic
merge patch, and older clients sent that to custom resources too, which refuse it). Pod logs are read raw:
the client would parse a log that happens to be JSON into a dict. The follow loop rides out transient API
errors (API_ERRORS_IN_A_ROW polls); a job whose pods never start is deleted after
LOOPLINE_K8S_STARTUP_TIMEOUT_SECONDS.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from loopline.errors import ConfigError, LooplineError, WaitTimeoutError
from loopline.train.k8s_manifests import LABEL_FLOW_RUN, LauncherSettings, LaunchPlan
from loopline.train.k8s_status import (
    JobState,
    LogCursor,
    describe_pods,
    exit_code,
    finished_at,
    job_state,
    json_object,
    node_zero,
    phase,
)

log = logging.getLogger(__name__)

TRAINER_GROUP, TRAINER_VERSION, TRAINJOBS = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
MERGE_PATCH = "application/merge-patch+json"
REQUEST_TIMEOUT_S = 30  # one API call
API_ERRORS_IN_A_ROW = 12  # transient API errors (5xx, 429, a dropped connection) that following rides out
LOG_TAIL_LINES = 200  # node 0's lines read per poll (progress lines come every training.log_every_steps)
RESULT_TAIL_LINES = 50
FAILED_TAIL_LINES = 30
GONE_TIMEOUT_S = 300  # deleting a finished job before creating it again: its pods get their grace period


class TrainingJobFailed(RuntimeError):
    """The job failed (a node crashed more often than the restarts allowed, a deadline): retryable, a new
    job resumes from the last checkpoint."""


class TrainingJobRefused(LooplineError):
    """Node 0 stopped on the user's mistake (exit 2: a bad config, a missing dataset)."""

    exit_code = 2


class KubernetesLauncher:
    """The API calls of one namespace. `api_client` is the official client's ApiClient."""

    def __init__(
        self,
        api_client: Any,
        namespace: str,
        *,
        poll_seconds: float = 5.0,
        startup_timeout_seconds: float = 3600.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        from kubernetes import client

        self.client = api_client
        self.namespace = namespace
        self.batch = client.BatchV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.poll_seconds = poll_seconds
        self.startup_timeout_seconds = startup_timeout_seconds
        self.sleep = sleep
        self.clock = clock

    @classmethod
    def connect(cls, settings: LauncherSettings) -> KubernetesLauncher:
        """In a pod: its ServiceAccount; elsewhere: the kubeconfig (KUBECONFIG, ~/.kube/config)."""
        from kubernetes import client, config

        configuration = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            try:
                # KUBECONFIG as it is now (the client reads it once, at import)
                config.load_kube_config(os.environ.get("KUBECONFIG"), client_configuration=configuration)
            except (config.ConfigException, OSError) as exc:
                raise ConfigError(
                    "training.launcher needs a Kubernetes API: run the flow in a pod (the Kubernetes work "
                    f"pool's ServiceAccount loopline-flow) or with a kubeconfig (KUBECONFIG): {exc}"
                ) from exc
        return cls(
            client.ApiClient(configuration),
            settings.namespace,
            poll_seconds=settings.poll_seconds,
            startup_timeout_seconds=settings.startup_timeout_seconds,
        )

    # --- the whole run ------------------------------------------------------------------------------

    def run(
        self,
        plan: LaunchPlan,
        *,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        on_status: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Create (or find) the job, follow it to its end, delete it when it succeeded or never started.
        A failed job stays for its logs until ttlSecondsAfterFinished; the next attempt replaces it."""
        self.launch(plan)
        try:
            result = self.follow(plan, on_progress=on_progress, on_status=on_status)
        except WaitTimeoutError:
            self.delete(plan.launcher, plan.name)  # it would start later, unwatched and outside the slot
            raise
        self.delete(plan.launcher, plan.name)
        return result

    def launch(self, plan: LaunchPlan) -> dict[str, Any]:
        """The owner, created suspended (or the run key's job that is still active), then the objects
        it owns, then resumed. Returns the owner as the API has it."""
        owner = self._call(self._create, plan.launcher, plan.owner)
        if owner is None:  # the run key's job exists already
            owner = self._adopt(plan)
        references = [
            {
                "apiVersion": owner["apiVersion"],
                "kind": owner["kind"],
                "name": plan.name,
                "uid": owner["metadata"]["uid"],
            }
        ]
        for manifest in plan.owned:
            body = {**manifest, "metadata": {**manifest["metadata"], "ownerReferences": references}}
            self._call(self._create, plan.launcher, body)  # exists already: an earlier attempt made it
        if owner.get("spec", {}).get("suspend"):
            self._call(self._patch_owner, plan.launcher, plan.name, {"spec": {"suspend": False}})
        return owner

    def follow(
        self,
        plan: LaunchPlan,
        *,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        on_status: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Poll the owner and its pods until the job ends; node 0's result, or an error saying why."""
        started, ran, last, cursor, errors = self.clock(), False, None, LogCursor(), 0
        while True:
            try:  # a training runs for hours: an API hiccup must not fail the run that follows it
                owner = self._call(self._read_owner, plan.launcher, plan.name)
                pods = [] if owner is None else self._call(self._pods, plan.pod_selector)
                node0 = node_zero(pods)
                if node0 is not None and phase(node0) != "Pending":
                    self._relay(plan, node0, cursor, on_progress)
            except Exception as exc:
                errors += 1
                if not _transient(exc) or errors > API_ERRORS_IN_A_ROW:
                    raise
                log.warning("reading %s failed (%d in a row): %s", plan.name, errors, exc)
                self.sleep(self.poll_seconds)
                continue
            errors = 0
            if owner is None:
                raise TrainingJobFailed(
                    f"{_kind(plan)} {self.namespace}/{plan.name} was deleted while it ran"
                )
            state = job_state(owner)
            summary = describe_pods(pods, plan.nodes, state)
            if summary != last and on_status:
                on_status(summary)
            last = summary
            ran = ran or any(phase(p) in ("Running", "Succeeded", "Failed") for p in pods)
            if state.phase == "succeeded":
                return self._result(plan, node0)
            if state.phase == "failed":
                raise self._failure(plan, state, pods)
            if not ran and self.clock() - started > self.startup_timeout_seconds:
                raise WaitTimeoutError(
                    f"no pod of {_kind(plan)} {self.namespace}/{plan.name} started within "
                    f"{self.startup_timeout_seconds:g} s (LOOPLINE_K8S_STARTUP_TIMEOUT_SECONDS): {summary}. "
                    f"The job was deleted. Check that the cluster has {plan.nodes} node(s) with the GPUs "
                    "asked for, and that the image pulls."
                )
            self.sleep(self.poll_seconds)

    def delete(self, launcher: str, name: str) -> None:
        """The owner (its pods with it: foreground propagation) and the objects it owns; absent is fine."""
        if launcher == "kubeflow":
            self._call(
                self.custom.delete_namespaced_custom_object,
                TRAINER_GROUP,
                TRAINER_VERSION,
                self.namespace,
                TRAINJOBS,
                name,
                propagation_policy="Foreground",
                missing_ok=True,
            )
        else:
            self._call(
                self.batch.delete_namespaced_job,
                name,
                self.namespace,
                propagation_policy="Foreground",
                missing_ok=True,
            )
            self._call(self.core.delete_namespaced_service, name, self.namespace, missing_ok=True)
        self._call(self.core.delete_namespaced_config_map, name, self.namespace, missing_ok=True)
        log.info("deleted %s %s/%s and what it owns", launcher, self.namespace, name)

    def delete_for_flow_run(self, flow_run_id: str) -> list[str]:
        """Every training job a flow run started (by its flow-run label), deleted. For on_cancellation."""
        selector = f"{LABEL_FLOW_RUN}={flow_run_id}"
        jobs = self._call(self.batch.list_namespaced_job, self.namespace, label_selector=selector)
        found = [("kubernetes", j.metadata.name) for j in jobs.items]
        trainjobs = self._call(
            self.custom.list_namespaced_custom_object,
            TRAINER_GROUP,
            TRAINER_VERSION,
            self.namespace,
            TRAINJOBS,
            label_selector=selector,
            missing_ok=True,
        )  # missing: Kubeflow Trainer is not installed
        found += [("kubeflow", t["metadata"]["name"]) for t in (trainjobs or {}).get("items", [])]
        for launcher, name in found:
            self.delete(launcher, name)
        return [name for _, name in found]

    # --- steps -------------------------------------------------------------------------------------

    def _adopt(self, plan: LaunchPlan) -> dict[str, Any]:
        """The run key's job exists: follow it while it is active (relabelled for this flow run, whose
        cancellation must find it); one that ended is deleted and created again."""
        owner = self._call(self._read_owner, plan.launcher, plan.name)
        if owner is not None and job_state(owner).phase in ("suspended", "active"):
            log.info(
                "%s %s/%s of this run key is running: following it", _kind(plan), self.namespace, plan.name
            )
            flow_run = plan.owner["metadata"]["labels"].get(LABEL_FLOW_RUN)
            if flow_run and owner["metadata"].get("labels", {}).get(LABEL_FLOW_RUN) != flow_run:
                patch = {"metadata": {"labels": {LABEL_FLOW_RUN: flow_run}}}
                owner = self._call(self._patch_owner, plan.launcher, plan.name, patch)
            return owner
        if owner is not None:
            log.info(
                "%s %s/%s of this run key has ended: creating it again",
                _kind(plan),
                self.namespace,
                plan.name,
            )
            self.delete(plan.launcher, plan.name)
            deadline = self.clock() + GONE_TIMEOUT_S
            while self._call(self._read_owner, plan.launcher, plan.name) is not None:
                if self.clock() > deadline:
                    raise TrainingJobFailed(
                        f"{_kind(plan)} {self.namespace}/{plan.name} was not gone after {GONE_TIMEOUT_S} s"
                    )
                self.sleep(self.poll_seconds)
        created = self._call(self._create, plan.launcher, plan.owner)
        if created is None:
            raise TrainingJobFailed(
                f"{_kind(plan)} {self.namespace}/{plan.name} was created by someone else meanwhile"
            )
        return created

    def _relay(self, plan: LaunchPlan, pod: dict, cursor: LogCursor, on_progress) -> None:
        text = self._read_log(pod, plan.container, timestamps=True, tail_lines=LOG_TAIL_LINES)
        for stamp, line in cursor.new_lines(pod["metadata"]["name"], text):
            item = json_object(line)
            if item is not None and isinstance(item.get("progress"), dict) and on_progress:
                try:
                    on_progress(item["progress"])
                except Exception as exc:  # the UI's progress must never stop the follow loop
                    log.debug("progress callback failed at %s: %s", stamp, exc)

    def _result(self, plan: LaunchPlan, node0: dict | None) -> dict[str, Any]:
        text = "" if node0 is None else self._read_log(node0, plan.container, tail_lines=RESULT_TAIL_LINES)
        for line in reversed(text.splitlines()):
            item = json_object(line)
            if item is not None and "model_uri" in item:
                return item
        raise TrainingJobFailed(
            f"{_kind(plan)} {self.namespace}/{plan.name} succeeded but node 0's log has no result line "
            "(its pod is gone?): the next attempt starts the job again, which returns the registered result"
        )

    def _failure(self, plan: LaunchPlan, state: JobState, pods: list[dict]) -> Exception:
        """The first pod that failed says why: exit 2 (the podFailurePolicy's FailJob) is the user's
        mistake, with node's own error line; anything else is retryable, with its last lines."""
        failed = sorted((p for p in pods if phase(p) == "Failed"), key=finished_at)
        refused = [p for p in failed if exit_code(p, plan.container) == 2]
        culprit = (refused or failed or [node_zero(pods)])[0]
        where = f"{_kind(plan)} {self.namespace}/{plan.name} failed ({state.reason}: {state.message})"
        tail = ""
        if culprit is not None:
            tail = self._read_log(culprit, plan.container, tail_lines=FAILED_TAIL_LINES)
            where += f"; pod {culprit['metadata']['name']} exited {exit_code(culprit, plan.container)}"
        if refused:
            error = next(
                (e for e in map(json_object, reversed(tail.splitlines())) if e and "error" in e), None
            )
            return TrainingJobRefused(f"{where}: {error['error'] if error else tail.strip()[-2000:]}")
        return TrainingJobFailed(f"{where}. Last lines:\n{tail.strip()[-4000:]}")

    # --- API calls ---------------------------------------------------------------------------------

    def _call(self, fn: Callable, *args: Any, missing_ok: bool = False, **kwargs: Any) -> Any:
        """One API call with a timeout. 404 with missing_ok, or 409 on a create: None. 401/403: a
        ConfigError naming the Role to apply (a retry cannot help)."""
        from kubernetes.client.exceptions import ApiException

        try:
            return fn(*args, _request_timeout=REQUEST_TIMEOUT_S, **kwargs)
        except ApiException as exc:
            if exc.status == 404 and missing_ok or exc.status == 409 and fn == self._create:
                return None
            if exc.status in (401, 403):
                raise ConfigError(
                    f"the Kubernetes API refused {getattr(fn, '__name__', fn)} in namespace {self.namespace} "
                    f"({exc.status} {exc.reason}): the flow's ServiceAccount (loopline-flow) needs the Role "
                    "in infra/k8s/training/rbac.yaml"
                ) from exc
            raise

    def _create(self, launcher: str, body: dict, **kw: Any) -> dict[str, Any]:
        kind = body["kind"]
        if kind == "TrainJob":
            return self.custom.create_namespaced_custom_object(
                TRAINER_GROUP, TRAINER_VERSION, self.namespace, TRAINJOBS, body, **kw
            )
        create = {
            "Job": self.batch.create_namespaced_job,
            "Service": self.core.create_namespaced_service,
            "ConfigMap": self.core.create_namespaced_config_map,
        }[kind]
        return self.client.sanitize_for_serialization(create(self.namespace, body, **kw))

    def _read_owner(self, launcher: str, name: str, **kw: Any) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            if launcher == "kubeflow":
                return self.custom.get_namespaced_custom_object(
                    TRAINER_GROUP, TRAINER_VERSION, self.namespace, TRAINJOBS, name, **kw
                )
            return self.client.sanitize_for_serialization(
                self.batch.read_namespaced_job(name, self.namespace, **kw)
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _patch_owner(self, launcher: str, name: str, patch: dict, **kw: Any) -> dict[str, Any]:
        if launcher == "kubeflow":
            return self.custom.patch_namespaced_custom_object(
                TRAINER_GROUP,
                TRAINER_VERSION,
                self.namespace,
                TRAINJOBS,
                name,
                patch,
                _content_type=MERGE_PATCH,
                **kw,
            )
        job = self.batch.patch_namespaced_job(name, self.namespace, patch, _content_type=MERGE_PATCH, **kw)
        return self.client.sanitize_for_serialization(job)

    def _pods(self, selector: str, **kw: Any) -> list[dict]:
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=selector, **kw)
        return self.client.sanitize_for_serialization(pods).get("items", [])

    def _read_log(self, pod: dict, container: str, **kw: Any) -> str:
        """A pod's log, or "" when there is none to read (the pod is gone, its container never started)."""
        from kubernetes.client.exceptions import ApiException

        try:
            return self._call(self._log, pod, container, **kw)
        except ApiException as exc:
            if exc.status in (400, 404):
                return ""
            raise

    def _log(self, pod: dict, container: str, **kw: Any) -> str:
        from kubernetes.client.exceptions import ApiException

        response = self.core.read_namespaced_pod_log(
            pod["metadata"]["name"], self.namespace, container=container, _preload_content=False, **kw
        )
        if not 200 <= response.status <= 299:  # raw responses are not checked by the client
            raise ApiException(http_resp=response)
        return response.data.decode("utf-8", errors="replace")


def _transient(exc: BaseException) -> bool:
    """An API error that the next poll may not see: overload, a restart, a dropped connection."""
    import urllib3
    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, ApiException):
        return exc.status in (0, 429, 500, 502, 503, 504)
    return isinstance(exc, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError))


def _kind(plan: LaunchPlan) -> str:
    return "TrainJob" if plan.launcher == "kubeflow" else "Job"
