"""The holdout gate's Jobs (spec.canary.gate), as a pass observes them: whether each ended, and the
termination message its evaluator left on its pod (planning/gate.py judges it).

A Job that ended is reported finished only once its pod has been read: a pod cache not filled yet
says nothing about the verdict, and a pass that took that for "no message" would report an error the
evaluator never had. A finished Job whose pod is gone (deleted by hand) is finished without a message.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from aliasroll.errors import AliasrollError
from aliasroll.labels import LABEL_GATE_DIGEST, LABEL_VERSION
from aliasroll.planning.state import ObservedGateJob
from aliasroll.planning.workloads import CONTAINER_NAME

log = logging.getLogger("aliasroll")


def is_gate_job(obj: Mapping[str, Any]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return (
        obj.get("kind") == "Job" and bool(labels.get(LABEL_GATE_DIGEST)) and bool(labels.get(LABEL_VERSION))
    )


def ended(obj: Mapping[str, Any]) -> tuple[bool, bool]:
    """(whether the Job ended, whether it failed past its activeDeadlineSeconds)."""
    finished, deadline = False, False
    for condition in ((obj.get("status") or {}).get("conditions")) or ():
        if condition.get("status") != "True":
            continue
        if condition.get("type") in ("Complete", "Failed"):
            finished = True
        if condition.get("type") == "Failed" and condition.get("reason") == "DeadlineExceeded":
            deadline = True
    return finished, deadline


def reduce_gate_jobs(
    jobs: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]] | AliasrollError
) -> tuple[ObservedGateJob, ...]:
    """Each gate Job, with its pod's message once it ended. `pods` is the error the pod cache gave
    when it could not be read: every Job then counts as still running, for this pass."""
    reduced = []
    for job in jobs:
        meta = job.get("metadata") or {}
        labels = meta.get("labels") or {}
        finished, deadline = ended(job)
        message = None
        if finished and isinstance(pods, AliasrollError):
            log.warning("cannot read the gate Job %s's pod: %s", meta.get("name"), pods)
            finished = False
        elif finished and not isinstance(pods, AliasrollError):
            message = _message(str(meta.get("name")), pods)
        reduced.append(
            ObservedGateJob(
                name=str(meta.get("name")),
                version=str(labels[LABEL_VERSION]),
                digest=str(labels[LABEL_GATE_DIGEST]),
                finished=finished,
                deadline_exceeded=deadline,
                message=message,
            )
        )
    return tuple(reduced)


def _message(job: str, pods: Iterable[Mapping[str, Any]]) -> str | None:
    """The evaluator container's termination message, of the Job's pod (backoffLimit 0: one pod)."""
    for pod in pods:
        meta = pod.get("metadata") or {}
        controllers = [ref for ref in meta.get("ownerReferences") or () if ref.get("kind") == "Job"]
        if not controllers or controllers[0].get("name") != job:
            continue
        for container in (pod.get("status") or {}).get("containerStatuses") or ():
            if container.get("name") != CONTAINER_NAME:
                continue
            terminated = (container.get("state") or {}).get("terminated") or {}
            message = terminated.get("message")
            return message if isinstance(message, str) and message else None
    return None
