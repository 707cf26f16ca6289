"""What the watch-fed caches keep of each object: only what the operator reads of it.

Anyone who may create a Deployment (or a pod) can give it the managed-by label and a large annotation,
in any namespace, so a cache (kube/cache.py) never keeps the object a watch delivers. Owned kinds keep
an object only when its controller ownerReference is a ModelDeployment, and then only what passes read
(`owned_projection`), with the fields the operator applied in compact form (`applied_view` reads them
back for the applier); pods only what passes read of them (`pod_projection`). Both are indexed by
their owner label (`owner_index`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from aliasroll.labels import (
    ANNOTATION_MODEL_URI,
    ANNOTATION_RUN_ID,
    LABEL_GATE_DIGEST,
    LABEL_GATED,
    LABEL_MANAGED_BY,
    LABEL_OWNER,
    LABEL_POD_TEMPLATE_HASH,
    LABEL_TRACK,
    LABEL_VERSION,
    MANAGER,
    READINESS_GATE,
)
from aliasroll.planning.workloads import ADMIN_PORT_NAME, CONTAINER_NAME, HTTP_PORT_NAME
from aliasroll.spec import GROUP, KIND

# Messages kept of a condition or a container's state are cut at this many characters: the kubelet's
# own bound on a termination message, which no real message passes.
MAX_MESSAGE = 4096
# Of an owned object, the fields the operator applied are kept up to this many characters of values
# (a Deployment it writes holds a few thousand). Past it none are kept, so the pass applies the object
# again (a no-op apply, by the same field manager, which also drops what it no longer writes).
MAX_APPLIED_CHARS = 128 * 1024
# Container statuses kept of a pod: the serving container, and a sidecar or two.
MAX_CONTAINERS = 4
# Where a kept owned object holds the fields the operator applied (owned_projection).
APPLIED = "aliasroll.io/applied"


def owner_index(obj: Mapping[str, Any]) -> tuple[str, str] | None:
    """(namespace, owner name) from the label the operator puts on everything it makes (and that
    the pod template gives to pods)."""
    meta = obj.get("metadata") or {}
    owner = (meta.get("labels") or {}).get(LABEL_OWNER)
    return (str(meta.get("namespace") or ""), str(owner)) if owner else None


def controller_of(meta: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The ownerReference marked controller (an object has at most one), or None."""
    for ref in meta.get("ownerReferences") or ():
        if isinstance(ref, Mapping) and ref.get("controller") is True:
            return ref
    return None


# The labels passes read (the owner index, the track, the version, version mode's mark); no other
# label is kept.
_LABELS = (LABEL_MANAGED_BY, LABEL_OWNER, LABEL_TRACK, LABEL_VERSION, LABEL_GATED, LABEL_GATE_DIGEST)
# Of a pod, also the ReplicaSet's hash: with the controller reference, which Deployment it belongs to.
_POD_LABELS = (*_LABELS, LABEL_POD_TEMPLATE_HASH)
# Pod conditions passes read: Ready (takes requests), ContainersReady (the probe passes, routed or
# not) and the operator's readiness gate.
_POD_CONDITIONS = ("Ready", "ContainersReady", READINESS_GATE)
_IDENTITY = ("name", "namespace", "uid", "resourceVersion", "generation")
_POD_CONTROLLERS = ("ReplicaSet", "Job")
_DEPLOYMENT_COUNTS = (
    "observedGeneration",
    "replicas",
    "updatedReplicas",
    "readyReplicas",
    "availableReplicas",
    "unavailableReplicas",
)


def owned_projection(obj: dict[str, Any]) -> dict[str, Any] | None:
    """What a cache of an owned kind keeps of an object: None unless its controller ownerReference is
    a ModelDeployment, else a bounded projection of it.

    Kept: the object's identity, the labels passes read and its controller reference; of a
    Deployment what `observe.reduce_deployment` reads (replicas, the version its template pins, the
    rollout's counts and conditions); and, as compact JSON under APPLIED (a few KiB, where the same
    fields as dicts take seven times that), every field the operator applied, found through the
    object's managedFields. The applier compares the objects it wants with these (`applied_view`,
    `applier.up_to_date`) to skip applies that would change nothing. A field someone else changed by
    hand is no longer the operator's in managedFields: it is then missing there, and the next pass
    applies it again, as it did when it compared whole objects. Nothing others added (annotations,
    sidecars, status) is kept.
    """
    meta = obj.get("metadata") or {}
    controller = controller_of(meta)
    if (
        controller is None
        or controller.get("kind") != KIND
        or str(controller.get("apiVersion") or "").partition("/")[0] != GROUP
    ):
        return None  # not a ModelDeployment's: no pass reads it, whatever labels it has
    labels = meta.get("labels") or {}
    kept: dict[str, Any] = {
        "apiVersion": obj.get("apiVersion"),
        "kind": obj.get("kind"),
        "metadata": {
            **{key: meta[key] for key in _IDENTITY if key in meta},
            "labels": {key: labels[key] for key in _LABELS if key in labels},
            # The controller reference as it is (the operator's own, or one that took its place):
            # who controls the object is what observe() and the applier compare.
            "ownerReferences": [
                {key: _cut(controller[key], 253) for key in _REF_FIELDS if key in controller}
            ],
        },
    }
    if obj.get("kind") == "Deployment":
        kept.update(_deployment_essentials(obj))
    elif obj.get("kind") == "Job":
        kept["status"] = {"conditions": _job_conditions(obj.get("status") or {})}
    applied = _applied(obj, meta.get("managedFields"))
    if applied is not None:
        kept[APPLIED] = json.dumps(applied, separators=(",", ":"), ensure_ascii=False)
    return kept


def applied_view(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """A kept object as the applier compares it: what the operator applied, with what else is kept
    (the controller reference as it is). An object without APPLIED is itself."""
    encoded = obj.get(APPLIED)
    if not isinstance(encoded, str):
        return obj
    rest = {key: value for key, value in obj.items() if key != APPLIED}
    view = _merged(json.loads(encoded), rest)
    view["metadata"]["ownerReferences"] = rest["metadata"]["ownerReferences"]
    return view


_REF_FIELDS = ("apiVersion", "kind", "name", "uid", "controller", "blockOwnerDeletion")


def _deployment_essentials(obj: Mapping[str, Any]) -> dict[str, Any]:
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    template_meta = (spec.get("template") or {}).get("metadata") or {}
    template_labels = template_meta.get("labels") or {}
    template_annotations = template_meta.get("annotations") or {}
    kept_spec: dict[str, Any] = {
        "template": {
            "metadata": {
                "labels": {k: template_labels[k] for k in (LABEL_VERSION,) if k in template_labels},
                "annotations": {
                    k: _cut(template_annotations[k], MAX_MESSAGE)
                    for k in (ANNOTATION_MODEL_URI, ANNOTATION_RUN_ID)
                    if k in template_annotations
                },
            }
        }
    }
    if "replicas" in spec:
        kept_spec["replicas"] = spec["replicas"]
    kept_status: dict[str, Any] = {key: status[key] for key in _DEPLOYMENT_COUNTS if key in status}
    conditions = [
        {
            key: _cut(condition[key], MAX_MESSAGE)
            for key in ("type", "status", "reason", "message")
            if key in condition
        }
        for condition in (status.get("conditions") or ())[:8]
        if isinstance(condition, Mapping)
    ]
    if conditions:
        kept_status["conditions"] = conditions
    return {"spec": kept_spec, "status": kept_status}


def _applied(obj: Mapping[str, Any], managed: Any) -> dict[str, Any] | None:
    """The fields of `obj` that the operator's field manager applied (its managedFields entries of
    operation Apply), or None when there are none or they hold more than MAX_APPLIED_CHARS."""
    fields: dict[str, Any] = {}
    for entry in managed or ():
        if (
            isinstance(entry, Mapping)
            and entry.get("manager") == MANAGER
            and entry.get("operation") == "Apply"
            and not entry.get("subresource")
            and isinstance(entry.get("fieldsV1"), Mapping)
        ):
            fields = _union(fields, entry["fieldsV1"])
    if not fields:
        return None
    budget = [MAX_APPLIED_CHARS]
    selected = _select(obj, fields, budget)
    return selected if type(selected) is dict and budget[0] >= 0 else None


def _union(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(a)
    for key, value in b.items():
        merged[key] = _union(merged[key], value) if key in merged else value
    return merged


def _select(value: Any, fields: Mapping[str, Any], budget: list[int]) -> Any:
    """The parts of `value` a managedFields set (fieldsV1) names: `f:<name>` a field of an object,
    `k:<json>` the item of a list whose keys have these values, `v:<json>` the item equal to it,
    `i:<n>` the n-th item; an empty set (or only `.`), the whole value (a scalar, or an atomic map
    or list). Runs on every event of an owned kind: decoded JSON is plain dicts and lists."""
    if type(value) is dict:
        selected: dict[str, Any] = {}
        for key, sub in fields.items():
            if key[:2] == "f:" and (name := key[2:]) in value:
                item = value[name]
                if sub and (len(sub) > 1 or "." not in sub) and type(item) in (dict, list):
                    selected[name] = _select(item, sub, budget)
                else:
                    budget[0] -= _chars(item)
                    selected[name] = item
            elif key == "." and len(fields) == 1:
                budget[0] -= _chars(value)
                return value
        return selected if fields else _whole(value, budget)
    if type(value) is list and any(key != "." for key in fields):
        items = _item_keys(fields)
        chosen: list[Any] = []
        for index, item in enumerate(value):
            for match, sub in items:
                if match(index, item):
                    whole = not sub or (len(sub) == 1 and "." in sub) or type(item) is not dict
                    chosen.append(_whole(item, budget) if whole else _select(item, sub, budget))
                    break
        return chosen
    return _whole(value, budget)


def _whole(value: Any, budget: list[int]) -> Any:
    budget[0] -= _chars(value)
    return value


ItemMatch = Callable[[int, Any], bool]


def _item_keys(members: Mapping[str, Any]) -> list[tuple[ItemMatch, Mapping[str, Any]]]:
    """How to find the list items a managedFields set names, each key decoded once per list."""
    found: list[tuple[ItemMatch, Mapping[str, Any]]] = []
    for key, sub in members.items():
        kind, _, literal = key.partition(":")
        try:
            if kind == "k":
                found.append((_keyed(json.loads(literal)), sub))
            elif kind == "v":
                found.append((_equal(json.loads(literal)), sub))
            elif kind == "i":
                found.append((_at_index(int(literal)), sub))
        except (ValueError, AttributeError):
            continue  # not a path element this reader knows: no item is kept for it
    return found


def _keyed(keys: Mapping[str, Any]) -> ItemMatch:
    pairs = tuple(keys.items())  # AttributeError when the key is not an object
    return lambda _, item: type(item) is dict and all(item.get(k) == v for k, v in pairs)


def _equal(value: Any) -> ItemMatch:
    return lambda _, item: bool(item == value)


def _at_index(at: int) -> ItemMatch:
    return lambda index, _: index == at


def _chars(value: Any) -> int:
    if type(value) is str:
        return len(value)
    if type(value) is dict:
        return sum(len(key) + _chars(item) for key, item in value.items())
    if type(value) is list:
        return sum(_chars(item) for item in value)
    return 8


def _merged(applied: dict[str, Any], kept: dict[str, Any]) -> dict[str, Any]:
    """Both are read from the same object: maps are merged, anything else is the applied value."""
    merged = dict(applied)
    for key, value in kept.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        elif key not in merged:
            merged[key] = value
    return merged


def _cut(value: Any, limit: int) -> Any:
    return value[:limit] if isinstance(value, str) else value


def pod_projection(pod: dict[str, Any]) -> dict[str, Any] | None:
    """What the pod cache keeps of a pod: None unless a ReplicaSet controls it and it names its
    owner in the owner label, else what passes read of it (its identity, the labels passes read, its
    IP, whether it is Ready, of a few containers why they fail and which run of them answers, and
    the serving container's two named ports, where the canary analysis reads /metrics). The rest
    of the spec, a copy of the Deployment's template, and the annotations are most of a pod's size."""
    meta = pod.get("metadata") or {}
    controller = controller_of(meta)
    labels = meta.get("labels") or {}
    # A serving pod (its ReplicaSet's), or the holdout gate's (its Job's).
    if controller is None or controller.get("kind") not in _POD_CONTROLLERS or LABEL_OWNER not in labels:
        return None
    status = pod.get("status") or {}
    kept_status: dict[str, Any] = {
        "conditions": [
            {"type": c.get("type"), "status": c.get("status")}
            for c in status.get("conditions") or ()
            if isinstance(c, Mapping) and c.get("type") in _POD_CONDITIONS
        ][: len(_POD_CONDITIONS)],
        "containerStatuses": [
            _container(c)
            for c in (status.get("containerStatuses") or ())[:MAX_CONTAINERS]
            if isinstance(c, Mapping)
        ],
    }
    if "podIP" in status:
        kept_status["podIP"] = _cut(status["podIP"], 64)
    kept = {
        "apiVersion": pod.get("apiVersion"),
        "kind": pod.get("kind"),
        "metadata": {
            **{key: meta[key] for key in ("name", "namespace", "uid", "resourceVersion") if key in meta},
            "labels": {key: labels[key] for key in _POD_LABELS if key in labels},
            "ownerReferences": [
                {key: _cut(controller[key], 253) for key in _REF_FIELDS if key in controller}
            ],
        },
        "status": kept_status,
    }
    ports = _serving_ports(pod.get("spec") or {})
    if ports:
        kept["spec"] = {"containers": [{"name": CONTAINER_NAME, "ports": ports}]}
    return kept


def _serving_ports(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The serving container's ports named http and admin, in a pod's own shape."""
    for container in (spec.get("containers") or ())[:MAX_CONTAINERS]:
        if isinstance(container, Mapping) and container.get("name") == CONTAINER_NAME:
            return [
                {"name": port["name"], "containerPort": port["containerPort"]}
                for port in (container.get("ports") or ())[:8]
                if isinstance(port, Mapping)
                and port.get("name") in (HTTP_PORT_NAME, ADMIN_PORT_NAME)
                and type(port.get("containerPort")) is int
            ]
    return []


def _job_conditions(status: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Whether a Job ended, and how: its Complete and Failed conditions (observe.reduce_gate_job)."""
    return [
        {key: _cut(c[key], 253) for key in ("type", "status", "reason") if key in c}
        for c in (status.get("conditions") or ())[:16]
        if isinstance(c, Mapping) and c.get("type") in ("Complete", "Failed")
    ][:2]


def _container(status: Mapping[str, Any]) -> dict[str, Any]:
    """What observe.container_failure and controller.analyzer.container_identity read of a container."""
    kept: dict[str, Any] = {
        key: _cut(status[key], 253)
        for key in ("name", "ready", "restartCount", "containerID")
        if key in status
    }
    state = status.get("state") or {}
    kept["state"] = {
        phase: _state(state[phase])
        for phase in ("waiting", "running", "terminated")
        if isinstance(state.get(phase), Mapping)
    }
    last = (status.get("lastState") or {}).get("terminated")
    if isinstance(last, Mapping):
        kept["lastState"] = {"terminated": _state(last)}
    return kept


def _state(state: Mapping[str, Any]) -> dict[str, Any]:
    return {key: _cut(state[key], MAX_MESSAGE) for key in ("reason", "message", "exitCode") if key in state}
