"""Reading a training job's state from what the Kubernetes API returns (plain dicts, no API calls).

A Job's or TrainJob's conditions as one phase; its pods as one line for the flow's log (how many nodes run,
and why the others do not yet: unschedulable, an image that does not pull, a config it cannot mount); node
0's pod (the newest pod with completion index 0, since a failed pod is replaced under the same index); and
which of node 0's log lines are new since the last poll.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

INDEX = "batch.kubernetes.io/job-completion-index"  # annotation (and label) of every Indexed Job pod
_NEVER = datetime.fromisoformat("9999-12-31T00:00:00+00:00")


@dataclass(frozen=True)
class JobState:
    phase: str  # suspended | active | succeeded | failed
    reason: str = ""
    message: str = ""


def job_state(owner: dict[str, Any]) -> JobState:
    """A Job's or TrainJob's conditions, as one of suspended | active | succeeded | failed."""
    conditions = {
        c.get("type"): c
        for c in (owner.get("status") or {}).get("conditions") or []
        if c.get("status") == "True"
    }
    for kind in ("Failed", "FailureTarget"):
        if kind in conditions:
            return JobState("failed", conditions[kind].get("reason", ""), conditions[kind].get("message", ""))
    for kind in ("Complete", "SuccessCriteriaMet"):
        if kind in conditions:
            return JobState(
                "succeeded", conditions[kind].get("reason", ""), conditions[kind].get("message", "")
            )
    if (owner.get("spec") or {}).get("suspend") or "Suspended" in conditions:
        return JobState("suspended")
    return JobState("active")


def describe_pods(pods: list[dict], nodes: int, state: JobState) -> str:
    """One line for the flow's log: how many nodes run, and why the others do not yet."""
    if state.phase == "suspended":
        return "job suspended (creating what it owns)"
    running = sum(phase(p) == "Running" for p in pods)
    notes = []
    for pod in sorted(pods, key=lambda p: (pod_index(p), p["metadata"].get("creationTimestamp") or "")):
        state_now = phase(pod)
        if state_now in ("Running", "Succeeded"):
            continue
        why = _waiting_reason(pod)
        notes.append(f"node {pod_index(pod)} {state_now.lower()}" + (f" ({why})" if why else ""))
    head = f"{running}/{nodes} nodes running"
    return head + (": " + "; ".join(notes) if notes else "")


def node_zero(pods: list[dict]) -> dict | None:
    """The newest pod of node rank 0 (a failed one is replaced by a pod with the same index)."""
    zeros = [p for p in pods if pod_index(p) == 0]
    return max(zeros, key=lambda p: p["metadata"].get("creationTimestamp") or "", default=None)


class LogCursor:
    """Which of node 0's lines were passed on already: by pod and log timestamp."""

    def __init__(self) -> None:
        self.pod, self.last = None, ""

    def new_lines(self, pod: str, text: str):
        if pod != self.pod:
            self.pod, self.last = pod, ""
        for raw in text.splitlines():
            stamp, _, line = raw.partition(" ")
            key = stamp_key(stamp)
            if key <= self.last:
                continue
            self.last = key
            yield stamp, line


def stamp_key(stamp: str) -> str:
    """RFC 3339 with nanoseconds, trailing zeros trimmed as the API does: padded to sort as text."""
    head, _, frac = stamp.rstrip("Z").partition(".")
    return f"{head}.{frac.ljust(9, '0')}"


def json_object(line: str) -> dict | None:
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        item = json.loads(line)
    except ValueError:
        return None
    return item if isinstance(item, dict) else None


def phase(pod: dict) -> str:
    return (pod.get("status") or {}).get("phase") or "Pending"


def pod_index(pod: dict) -> int:
    meta = pod["metadata"]
    raw = (meta.get("annotations") or {}).get(INDEX) or (meta.get("labels") or {}).get(INDEX)
    try:
        return int(raw)
    except (TypeError, ValueError):
        return -1


def _waiting_reason(pod: dict) -> str:
    status = pod.get("status") or {}
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting")
        if waiting and waiting.get("reason") not in (None, "ContainerCreating", "PodInitializing"):
            return f"{waiting['reason']}: {waiting.get('message', '')}".rstrip(": ")
        terminated = (container.get("state") or {}).get("terminated")
        if terminated:
            return f"exit {terminated.get('exitCode')} {terminated.get('reason', '')}".strip()
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return f"{condition.get('reason', '')}: {condition.get('message', '')}".rstrip(": ")
    return ""


def exit_code(pod: dict, container: str) -> int | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (status.get("state") or {}).get("terminated")
        if status.get("name") == container and terminated:
            return terminated.get("exitCode")
    return None


def finished_at(pod: dict) -> datetime:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        finished = ((status.get("state") or {}).get("terminated") or {}).get("finishedAt")
        if finished:
            return datetime.fromisoformat(finished.replace("Z", "+00:00"))
    return _NEVER
