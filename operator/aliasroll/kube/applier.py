"""The one writer: server-side apply of desired objects, pruning, and the status subresource.

Every write goes through here with one field manager, so `kubectl get -o yaml --show-managed-fields`
shows exactly what the operator owns, and hand edits of those fields are taken back on the next pass.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import httpx2
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import Pod
from lightkube.types import CascadeType, PatchType

from aliasroll.errors import KubernetesUnavailable
from aliasroll.kube.failures import api_failure, status_code
from aliasroll.kube.observe import ObjectKey
from aliasroll.kube.resources import ModelDeployment, resource_for
from aliasroll.labels import MANAGER, READINESS_GATE
from aliasroll.planning.state import ChildRef
from aliasroll.planning.versions import GateWrite
from aliasroll.planning.workloads import Manifest
from aliasroll.spec import KIND, ResourceRef

log = logging.getLogger(__name__)

# Maps that server-side apply replaces whole (x-kubernetes-map-type: atomic). A key someone added by
# hand to a Service selector sends traffic to other pods, or to none; the live map must equal ours,
# and applying ours (forced) puts it back.
ATOMIC_MAPS: dict[str, tuple[tuple[str, ...], ...]] = {
    "Service": (("spec", "selector"),),
    "PodDisruptionBudget": (("spec", "selector", "matchLabels"),),
}


# Readiness-gate patches a pass keeps in flight at once (version mode).
GATE_PATCHES_AT_ONCE = 32


class Applier:
    def __init__(self, client: AsyncClient, *, field_manager: str = MANAGER) -> None:
        self._client = client
        self._field_manager = field_manager

    async def apply(
        self, objects: Iterable[Manifest], live: Mapping[ObjectKey, Mapping[str, Any]]
    ) -> list[ObjectKey]:
        """Applies what differs from the live objects; returns what was written."""
        written: list[ObjectKey] = []
        for obj in objects:
            kind, name = obj["kind"], obj["metadata"]["name"]
            current = live.get((kind, name))
            if current is not None and up_to_date(obj, current):
                continue  # already as wanted: no write, no new resourceVersion
            try:
                await self._client.patch(
                    resource_for(obj["apiVersion"], kind),
                    name,
                    obj,
                    namespace=obj["metadata"]["namespace"],
                    patch_type=PatchType.APPLY,
                    field_manager=self._field_manager,
                    force=True,  # the operator's fields are the operator's: take them back from hand edits
                )
            except httpx2.HTTPError as error:
                raise api_failure("apply", kind, name, error) from None
            written.append((kind, name))
        return written

    async def prune(self, children: Iterable[ChildRef], *, namespace: str) -> list[ObjectKey]:
        deleted: list[ObjectKey] = []
        for child in children:
            try:
                await self._client.delete(
                    resource_for(child.api_version, child.kind),
                    child.name,
                    namespace=namespace,
                    cascade=CascadeType.BACKGROUND,
                )
            except httpx2.HTTPError as error:
                if status_code(error) != 404:
                    raise api_failure("delete", child.kind, child.name, error) from None
            deleted.append((child.kind, child.name))
        return deleted

    async def set_gates(self, gates: Sequence[GateWrite], *, namespace: str) -> list[ObjectKey]:
        """Sets the readiness gate `aliasroll.io/routed` on pods (version mode): True routes a pod
        (Ready, an endpoint, once its probe passes), False takes it out of the Services' endpoints
        while it keeps running. A strategic merge of the pod's status merges conditions by type, so
        the kubelet's own conditions are left as they are. The planner lists only pods of the
        resource's own Deployments; a pod gone meanwhile is skipped."""
        # All at once: a version's pods then turn Ready together, and the Service's endpoints change
        # in one step rather than pod by pod (kube-proxy applies a change at most once a second).
        # At most GATE_PATCHES_AT_ONCE in flight: a floor of a thousand pods is not a thousand
        # requests at once on the operator's one API connection pool.
        limit = asyncio.Semaphore(GATE_PATCHES_AT_ONCE)

        async def bounded(gate: GateWrite) -> bool:
            async with limit:
                return await self._set_gate(gate, namespace)

        done = await asyncio.gather(*(bounded(gate) for gate in gates), return_exceptions=True)
        for outcome in done:
            if isinstance(outcome, BaseException):
                raise outcome
        return [("Pod", gate.pod) for gate, outcome in zip(gates, done, strict=True) if outcome]

    async def _set_gate(self, gate: GateWrite, namespace: str) -> bool:
        """False when the pod is gone."""
        body = {
            "status": {"conditions": [{"type": READINESS_GATE, "status": "True" if gate.routed else "False"}]}
        }
        try:
            await self._client.patch(
                Pod.Status, gate.pod, body, namespace=namespace, patch_type=PatchType.STRATEGIC
            )
        except httpx2.HTTPError as error:
            if status_code(error) != 404:
                raise api_failure("set the readiness gate of", "Pod", gate.pod, error) from None
            return False
        return True

    async def write_status(self, owner: ResourceRef, status: Mapping[str, Any]) -> bool:
        """Writes the whole status, only onto the object this pass is for; False when the resource is
        gone (deleted during the pass, or deleted and created again under the same name: a pass for
        the old one must never write onto the new one, so the patch first tests the uid)."""
        operations = [
            {"op": "test", "path": "/metadata/uid", "value": owner.uid},
            {"op": "add", "path": "/status", "value": dict(status)},
        ]
        try:
            await self._client.patch(
                ModelDeployment.Status,
                owner.name,
                operations,
                namespace=owner.namespace,
                patch_type=PatchType.JSON,
                field_manager=self._field_manager,
            )
        except httpx2.HTTPError as error:
            if object_not_found(error, owner.name):
                return False
            if status_code(error) == 404:
                # A bare 404 (no Status naming the object): the API server is reloading its custom
                # resource handlers (a CRD was just created or deleted). Not proof of a deletion.
                raise KubernetesUnavailable(
                    f"cannot write the status of {KIND} {owner.name}: the API server does not serve "
                    "the resource right now (HTTP 404)"
                ) from None
            if status_code(error) == 422 and await self._replaced(owner):
                return False
            raise api_failure("write the status of", KIND, owner.name, error) from None
        return True

    async def _replaced(self, owner: ResourceRef) -> bool:
        """After a refused status patch: whether the object by that name is another one (the uid
        test failed) or gone, rather than our status being invalid."""
        try:
            live = await self._client.get(ModelDeployment, owner.name, namespace=owner.namespace)
        except httpx2.HTTPError as error:
            return object_not_found(error, owner.name)
        meta = live.get("metadata") if isinstance(live, Mapping) else getattr(live, "metadata", None)
        uid = meta.get("uid") if isinstance(meta, Mapping) else getattr(meta, "uid", None)
        return uid != owner.uid


def object_not_found(error: httpx2.HTTPError, name: str) -> bool:
    """The API server's own word that the named object does not exist (a Status of reason NotFound
    naming it), as opposed to a 404 page for a path it does not serve at the moment."""
    if not isinstance(error, ApiError) or error.status.code != 404:
        return False
    details = error.status.details
    return error.status.reason == "NotFound" and details is not None and details.name == name


def is_subset(wanted: Any, live: Any) -> bool:
    """True when every field the operator wants is already present with the same value.

    API defaults add fields and never change ours; where the server normalises a value (quantities,
    for instance) this says 'differs' and costs one no-op apply, never a missed change.
    """
    if isinstance(wanted, Mapping):
        return isinstance(live, Mapping) and all(
            key in live and is_subset(value, live[key]) for key, value in wanted.items()
        )
    if isinstance(wanted, list):
        return (
            isinstance(live, list)
            and len(wanted) == len(live)
            and all(is_subset(a, b) for a, b in zip(wanted, live, strict=True))
        )
    return bool(wanted == live)


def up_to_date(wanted: Manifest, live: Mapping[str, Any]) -> bool:
    """True when applying `wanted` would change nothing the operator owns."""
    return is_subset(wanted, live) and all(
        _at(wanted, path) == _at(live, path) for path in ATOMIC_MAPS.get(wanted["kind"], ())
    )


def _at(obj: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = obj
    for part in path:
        node = node.get(part) if isinstance(node, Mapping) else None
    return node
