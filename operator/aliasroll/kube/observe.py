"""Reads the objects a ModelDeployment owns (from the watch-fed cache) and reduces them to the
planner's ObservedState."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx2
from lightkube import AsyncClient
from lightkube.core.resource import api_info

from aliasroll.errors import AliasrollError
from aliasroll.kube.failures import api_failure, status_code
from aliasroll.kube.gate_jobs import is_gate_job, reduce_gate_jobs
from aliasroll.kube.projection import applied_view
from aliasroll.kube.resources import resource_for
from aliasroll.labels import (
    ANNOTATION_MODEL_URI,
    ANNOTATION_RUN_ID,
    LABEL_GATED,
    LABEL_POD_TEMPLATE_HASH,
    LABEL_TRACK,
    LABEL_VERSION,
    READINESS_GATE,
)
from aliasroll.planning.observed import ObservedTrack
from aliasroll.planning.state import (
    ChildRef,
    ObservedPod,
    ObservedState,
    ObservedVersion,
    ObservedWorkload,
)
from aliasroll.planning.workloads import Manifest
from aliasroll.spec import ResourceRef, Track

log = logging.getLogger("aliasroll")

ObjectKey = tuple[str, str]  # (kind, name) of an object in the resource's namespace


@dataclass(frozen=True)
class Observation:
    state: ObservedState
    live: Mapping[ObjectKey, Mapping[str, Any]] = field(default_factory=dict)  # for skipping no-op applies


class OwnedObjects(Protocol):
    """Where a pass reads what exists: the watch-fed cache (kube.cache.OwnedCache)."""

    async def owned(self, owner: ResourceRef) -> list[Mapping[str, Any]]: ...

    async def pods(self, owner: ResourceRef) -> list[Mapping[str, Any]]: ...


async def observe(objects: OwnedObjects, owner: ResourceRef) -> Observation:
    """The objects of every kind the operator may own that carry this resource's label, keeping
    only those it controls.

    Raises KubernetesApplyFailed or KubernetesUnavailable when the cache has not finished its first
    list: without a full picture of what exists, the pass must neither apply nor prune.
    """
    live: dict[ObjectKey, Mapping[str, Any]] = {}
    children: list[ChildRef] = []
    deployments: list[Mapping[str, Any]] = []
    gate_jobs: list[Mapping[str, Any]] = []
    for obj in await objects.owned(owner):
        meta = obj.get("metadata") or {}
        if not _controlled_by(meta, owner):
            continue  # same labels, someone else's object: never touch it
        kind, name = obj["kind"], meta["name"]
        live[(kind, name)] = applied_view(obj)  # the cache keeps what the operator applied compact
        children.append(ChildRef(api_version=obj["apiVersion"], kind=kind, name=name, uid=meta.get("uid")))
        if kind == "Deployment" and (_track(obj) is not None or _gated(obj)):
            deployments.append(obj)
        elif is_gate_job(obj):
            gate_jobs.append(obj)
    listed = await _pods(objects, owner) if deployments else []
    judged = reduce_gate_jobs(gate_jobs, await _gate_pods(objects, owner)) if gate_jobs else ()
    pods = PodStates.of(listed)
    workloads: dict[Track, ObservedWorkload] = {}
    versions: list[ObservedVersion] = []
    for obj in deployments:
        if _gated(obj):
            if (version := reduce_version(obj, listed)) is not None:
                versions.append(version)
        elif (workload := reduce_deployment(obj, pods)) is not None:
            workloads[workload.track] = workload
    state = ObservedState(
        workloads=workloads, children=tuple(children), versions=tuple(versions), gate_jobs=judged
    )
    return Observation(state=state, live=live)


def _gated(obj: Mapping[str, Any]) -> bool:
    return bool(((obj.get("metadata") or {}).get("labels") or {}).get(LABEL_GATED))


def reduce_version(obj: Mapping[str, Any], pods: Iterable[Mapping[str, Any]]) -> ObservedVersion | None:
    """One version-mode Deployment, with its pods: those of its own ReplicaSets only (the pod's
    controller is `<deployment>-<pod-template-hash>`), so a pod that merely carries the labels is
    neither counted nor ever patched."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    template_meta = (spec.get("template") or {}).get("metadata") or {}
    model, version = _parse_model_uri((template_meta.get("annotations") or {}).get(ANNOTATION_MODEL_URI))
    if model is None or version is None:
        return None
    name = str(meta.get("name"))
    replicas = int(spec.get("replicas", 1))
    seen = int(status.get("observedGeneration", 0)) >= int(meta.get("generation", 0))
    updated = int(status.get("updatedReplicas", 0))
    rolled_out = seen and updated >= replicas and int(status.get("replicas", 0)) <= updated
    own = [pod for pod in pods if _pod_of(pod, name)]
    failures = (_pod_failure(pod) for pod in sorted(own, key=_pod_name))
    return ObservedVersion(
        name=name,
        model=model,
        version=version,
        replicas=replicas,
        available=sum(1 for pod in own if _condition(pod, "Ready") is True),
        rolled_out=rolled_out,
        run_id=(template_meta.get("annotations") or {}).get(ANNOTATION_RUN_ID),
        stalled=_stalled(status),
        pod_failure=next((failure for failure in failures if failure is not None), None),
        pods=tuple(
            ObservedPod(
                name=_pod_name(pod),
                routed=_condition(pod, READINESS_GATE),
                ready=_condition(pod, "Ready") is True,
                probe_ready=_condition(pod, "ContainersReady") is True,
            )
            for pod in own
        ),
    )


def _pod_of(pod: Mapping[str, Any], deployment: str) -> bool:
    meta = pod.get("metadata") or {}
    template_hash = (meta.get("labels") or {}).get(LABEL_POD_TEMPLATE_HASH)
    return any(
        ref.get("controller") is True
        and ref.get("kind") == "ReplicaSet"
        and template_hash
        and ref.get("name") == f"{deployment}-{template_hash}"
        for ref in meta.get("ownerReferences") or ()
    )


def _condition(pod: Mapping[str, Any], kind: str) -> bool | None:
    for condition in (pod.get("status") or {}).get("conditions") or ():
        if condition.get("type") == kind:
            return bool(condition.get("status") == "True")
    return None


async def taken_names(
    client: AsyncClient, owner: ResourceRef, objects: Iterable[Manifest], live: Mapping[ObjectKey, Any]
) -> list[str]:
    """Objects the plan would create whose name is already taken by an object this resource does not
    control, each described for a condition message (kind, name and who controls it). Empty when
    every name is free or ours.

    The cache holds only the objects that carry our labels; a name can be taken by anything, so each
    object the pass would create is looked up by name first. That costs a GET only when an object is
    missing, which is rare once a resource has converged.
    """
    taken: list[str] = []
    for obj in objects:
        kind, name = obj["kind"], obj["metadata"]["name"]
        if (kind, name) in live:
            continue  # ours
        resource = resource_for(obj["apiVersion"], kind)
        try:
            found = await client.get(resource, name, namespace=owner.namespace)
        except httpx2.HTTPError as error:
            if status_code(error) == 404:
                continue  # free
            raise api_failure("read", kind, name, error) from None
        meta = _as_dict(found, resource).get("metadata") or {}
        if _controlled_by(meta, owner):
            continue  # ours, made a moment ago: the cache has not seen it yet
        taken.append(f"{kind} {name!r} ({_controller_of(meta)})")
    return taken


def _controller_of(meta: Mapping[str, Any]) -> str:
    for ref in meta.get("ownerReferences") or ():
        if ref.get("controller"):
            return f"controlled by {ref.get('kind')} {ref.get('name')!r}, uid {ref.get('uid')}"
    return "controlled by nothing: made by hand or by another tool"


def _as_dict(item: Any, resource: Any) -> dict[str, Any]:
    data: dict[str, Any] = dict(item) if isinstance(item, dict) else item.to_dict()
    # Lists leave apiVersion/kind out of items; the resource class knows them.
    info = api_info(resource).resource
    data.setdefault("apiVersion", info.api_version)
    data.setdefault("kind", info.kind)
    return data


def _controlled_by(meta: Mapping[str, Any], owner: ResourceRef) -> bool:
    return any(
        ref.get("uid") == owner.uid and ref.get("controller") for ref in meta.get("ownerReferences") or ()
    )


def _track(obj: Mapping[str, Any]) -> Track | None:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    try:
        return Track(str(labels.get(LABEL_TRACK)))
    except ValueError:
        return None


def reduce_deployment(obj: Mapping[str, Any], pods: PodStates | None = None) -> ObservedTrack | None:
    """One owned Deployment, with what its pods say: how many of them run the version its template
    pins and are available, and why one of them cannot start."""
    track = _track(obj)
    if track is None:
        return None
    pods = PodStates() if pods is None else pods
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    template = spec.get("template") or {}
    template_meta = template.get("metadata") or {}
    model, version = _parse_model_uri((template_meta.get("annotations") or {}).get(ANNOTATION_MODEL_URI))
    version = (template_meta.get("labels") or {}).get(LABEL_VERSION) or version
    replicas = int(spec.get("replicas", 1))
    updated = int(status.get("updatedReplicas", 0))
    available = int(status.get("availableReplicas", 0))
    seen = int(status.get("observedGeneration", 0)) >= int(meta.get("generation", 0))
    # The rule `kubectl rollout status` uses: the controller saw this generation, every replica is
    # updated, no old replica is left, and every updated replica is available.
    rolled_out = (
        seen and updated >= replicas and int(status.get("replicas", 0)) <= updated and available >= updated
    )
    if rolled_out:
        of_version = available  # no old pod is left: every available pod runs the pinned version
    else:
        # The Deployment's count mixes both versions while it rolls: its ready pods of the pinned
        # version, at most its available pods, and at most its updated ones once the controller has
        # seen this template (before, `updatedReplicas` counts the previous template's pods).
        of_version = min(pods.ready.get((track, version or ""), 0), available, updated if seen else available)
    return ObservedTrack(
        name=str(meta.get("name")),
        track=track,
        model=model,
        version=version,
        replicas=replicas,
        available=of_version,
        rolled_out=rolled_out,
        stalled=_stalled(status),
        run_id=(template_meta.get("annotations") or {}).get(ANNOTATION_RUN_ID),
        pod_failure=pods.failures.get((track, version or "")),
        serving=available,
    )


async def _pods(objects: OwnedObjects, owner: ResourceRef) -> list[Mapping[str, Any]]:
    """The serving pods of this resource. Pods are the ReplicaSets', not ours: they are read for
    why a version cannot start, never applied nor pruned; a cache not filled yet only loses that detail."""
    try:
        return await objects.pods(owner)
    except AliasrollError as error:
        log.warning("cannot read the pods of %s: %s", owner.name, error)
        return []


async def _gate_pods(objects: OwnedObjects, owner: ResourceRef) -> list[Mapping[str, Any]] | AliasrollError:
    """The pods whose messages say a gate's verdict: an unreadable cache is said, not taken for none."""
    try:
        return await objects.pods(owner)
    except AliasrollError as error:
        return error


# Waiting reasons that are a failure of the pod's own settings, not a step of its start.
FAILED_WAITING = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
    }
)


@dataclass(frozen=True)
class PodStates:
    """The serving pods reduced per (track, version): how many are ready, and why one cannot start."""

    ready: Mapping[tuple[Track, str], int] = field(default_factory=dict)
    failures: Mapping[tuple[Track, str], str] = field(default_factory=dict)

    @classmethod
    def of(cls, pods: Iterable[Mapping[str, Any]]) -> PodStates:
        return cls(ready=ready_pods(pods), failures=pod_failures(pods))


def _pod_key(pod: Mapping[str, Any]) -> tuple[Track, str] | None:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    try:
        return Track(str(labels.get(LABEL_TRACK))), str(labels.get(LABEL_VERSION))
    except ValueError:
        return None


def ready_pods(pods: Iterable[Mapping[str, Any]]) -> dict[tuple[Track, str], int]:
    """(track, version) -> pods whose Ready condition is True (the operator's Deployments set no
    minReadySeconds, so a ready pod is an available one)."""
    counts: dict[tuple[Track, str], int] = {}
    for pod in pods:
        key = _pod_key(pod)
        if key is not None and _condition(pod, "Ready") is True:
            counts[key] = counts.get(key, 0) + 1
    return counts


def pod_failures(pods: Iterable[Mapping[str, Any]]) -> dict[tuple[Track, str], str]:
    """(track, version) -> why a pod of that version cannot start, from its container's status (the
    first pod by name that has a reason)."""
    found: dict[tuple[Track, str], str] = {}
    for pod in sorted(pods, key=_pod_name):
        key = _pod_key(pod)
        if key is not None and key not in found and (failure := _pod_failure(pod)) is not None:
            found[key] = failure
    return found


def _pod_name(pod: Mapping[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("name"))


def _pod_failure(pod: Mapping[str, Any]) -> str | None:
    """Why the pod cannot start, from the first of its containers that fails."""
    for status in (pod.get("status") or {}).get("containerStatuses") or ():
        if (why := container_failure(status)) is not None:
            return f"pod {_pod_name(pod)} {why}"
    return None


def _stalled(status: Mapping[str, Any]) -> str | None:
    """The Deployment controller's message once a rollout exceeded its progress deadline."""
    for condition in status.get("conditions") or ():
        if condition.get("type") == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded":
            return str(condition.get("message") or "the Deployment exceeded its progress deadline")
    return None


def container_failure(status: Mapping[str, Any]) -> str | None:
    """Why a serving container fails, or None while it starts, serves or was stopped on purpose.

    A container that keeps failing fails in every state of its cycle, with the same words: exited
    (terminated non-zero), waiting to be restarted (CrashLoopBackOff, whatever its last exit code: a
    server must not exit), and running again but not ready yet after a non-zero exit (the restart
    proves nothing until the container is ready). So a crash loop is one failure for as long as it
    lasts, never a failure per restart. A waiting reason that needs a fix (an image that cannot be
    pulled, a missing Secret) is a failure too. A ready container is not failing, whatever it did
    before; a container that exited 0 was stopped (a drain).
    """
    if status.get("ready"):
        return None
    state = status.get("state") or {}
    waiting = state.get("waiting") or {}
    last = (status.get("lastState") or {}).get("terminated") or {}
    terminated = state.get("terminated")
    if terminated is not None:
        exited = terminated if int(terminated.get("exitCode", 0)) != 0 else None
    elif waiting.get("reason") == "CrashLoopBackOff":
        exited = last or {"exitCode": "unknown", "reason": "CrashLoopBackOff"}
    elif last and int(last.get("exitCode", 0)) != 0:
        exited = last  # restarted after a failure: failing until it is ready
    else:
        exited = None
    if exited is not None:
        said = str(exited.get("message") or exited.get("reason") or "").strip()
        return f"exited with code {exited.get('exitCode')}" + (f": {said}" if said else "")
    if waiting.get("reason") in FAILED_WAITING:
        return f"cannot start: {waiting.get('reason')}: {waiting.get('message') or ''}".rstrip(": ")
    return None


def _parse_model_uri(uri: str | None) -> tuple[str | None, str | None]:
    if not uri or not uri.startswith("models:/"):
        return None, None
    name, _, version = uri[len("models:/") :].rpartition("/")
    return (name or None), (version or None)
