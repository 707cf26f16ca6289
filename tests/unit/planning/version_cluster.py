"""A small cluster for version mode's planner tests: Deployments per version, their pods, the gate.

It does what the API server, the Deployment controller and the kubelet do with a plan: applies the
Deployments (new pods start not ready; `start()` makes them pass their probe), deletes what is pruned,
sets the gates the plan asks, and computes Ready (probe passing and gate True) as the kubelet does.
`observed()` reduces it as kube/observe.py does, and `serving()` says which versions answer.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from builders import NOW, OWNER

from aliasroll.labels import LABEL_GATED, LABEL_TRACK, LABEL_VERSION
from aliasroll.planning.canary import AnalysisResult
from aliasroll.planning.planner import Plan, plan
from aliasroll.planning.state import (
    ChildRef,
    ObservedPod,
    ObservedState,
    ObservedVersion,
    ObservedWorkload,
    RegistryView,
)
from aliasroll.planning.workloads import WorkloadDefaults
from aliasroll.spec import ModelDeploymentSpec, Track

_names = itertools.count()


@dataclass
class Pod:
    name: str
    probe_ready: bool = False
    routed: bool | None = None

    @property
    def ready(self) -> bool:
        return self.probe_ready and self.routed is True


@dataclass
class Deployment:
    name: str
    model: str
    version: str
    replicas: int
    gated: bool
    track: Track | None = None
    pods: list[Pod] = field(default_factory=list)
    role: str | None = None  # the aliasroll.io/role label the last plan gave it

    def pods_names(self) -> set[str]:
        return {pod.name for pod in self.pods}

    def scale(self) -> None:
        while len(self.pods) < self.replicas:
            self.pods.append(Pod(f"{self.name}-{next(_names)}", probe_ready=False, routed=None))
        # A ReplicaSet removes pods that are not ready first.
        self.pods.sort(key=lambda pod: (pod.ready, pod.probe_ready))
        del self.pods[: max(0, len(self.pods) - self.replicas)]


@dataclass
class VersionCluster:
    now: datetime = NOW
    deployments: dict[str, Deployment] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)
    others: list[ChildRef] = field(default_factory=list)
    events: list[tuple[str, str]] = field(default_factory=list)
    gate_writes: int = 0
    route: dict[str, int] | None = None  # the gatewayAPI router's backend weights, by version

    def legacy_track(self, track: Track, version: str, replicas: int) -> None:
        """A track Deployment of the track model, serving (its pods have no gate)."""
        deployment = Deployment(f"sentiment-{track.value}", "sentiment", version, replicas, False, track)
        deployment.pods = [Pod(f"{track.value}-{i}", probe_ready=True, routed=True) for i in range(replicas)]
        self.deployments[deployment.name] = deployment

    def observed(self) -> ObservedState:
        versions, workloads = [], {}
        for d in self.deployments.values():
            available = sum(pod.ready for pod in d.pods)
            if d.gated:
                versions.append(
                    ObservedVersion(
                        name=d.name,
                        model=d.model,
                        version=d.version,
                        replicas=d.replicas,
                        available=available,
                        rolled_out=len(d.pods) == d.replicas,
                        pods=tuple(ObservedPod(p.name, p.routed, p.ready, p.probe_ready) for p in d.pods),
                    )
                )
            else:
                assert d.track is not None
                workloads[d.track] = ObservedWorkload(
                    d.name, d.track, d.model, d.version, d.replicas, available, rolled_out=True
                )
        children = [ChildRef("apps/v1", "Deployment", name) for name in self.deployments]
        return ObservedState(
            workloads=workloads, children=tuple(children + self.others), versions=tuple(versions)
        )

    def reconcile(
        self, spec: ModelDeploymentSpec, view: RegistryView, *, bake_analysis: AnalysisResult | None = None
    ) -> Plan:
        result = plan(
            owner=OWNER,
            spec=spec,
            view=view,
            observed=self.observed(),
            previous_status=self.status,
            now=self.now,
            defaults=WorkloadDefaults(image="serving:test"),
            bake_analysis=bake_analysis,
        )
        self.apply(result)
        return result

    def apply(self, result: Plan) -> None:
        wanted = set()
        for obj in result.objects:
            name = obj["metadata"]["name"]
            wanted.add((obj["kind"], name))
            if obj["kind"] != "Deployment":
                if not any(c.name == name and c.kind == obj["kind"] for c in self.others):
                    self.others.append(ChildRef(obj["apiVersion"], obj["kind"], name))
                continue
            labels = obj["metadata"]["labels"]
            template = obj["spec"]["template"]
            found = self.deployments.get(name)
            if found is None:
                uri = template["metadata"]["annotations"]["aliasroll.io/model-uri"]
                model = uri[len("models:/") :].rpartition("/")[0]
                gated = LABEL_GATED in labels
                assert gated == bool(template["spec"].get("readinessGates"))
                track = None if gated else Track(labels[LABEL_TRACK])
                found = Deployment(name, model, labels[LABEL_VERSION], 0, gated, track)
                self.deployments[name] = found
            found.replicas = obj["spec"]["replicas"]
            found.role = labels.get("aliasroll.io/role")
            found.scale()
        for child in result.prune:
            if child.kind == "Deployment":
                self.deployments.pop(child.name, None)
            else:
                self.others = [c for c in self.others if (c.kind, c.name) != (child.kind, child.name)]
        pods = {pod.name: pod for d in self.deployments.values() for pod in d.pods}
        for gate in result.gates:
            if gate.pod in pods:
                pods[gate.pod].routed = gate.routed
                self.gate_writes += 1
        for obj in result.objects:
            if obj["kind"] == "HTTPRoute":
                refs = obj["spec"]["rules"][0]["backendRefs"]
                self.route = {
                    self.deployments[ref["name"]].version
                    if ref["name"] in self.deployments
                    else ref["name"]: ref["weight"]
                    for ref in refs
                }
        self.status = dict(result.status)
        self.events += [(event.reason, event.message) for event in result.events]

    def start(self, count: int | None = None) -> None:
        """Pods pass their probe (all, or the first `count` not passing yet)."""
        starting = [pod for d in self.deployments.values() for pod in d.pods if not pod.probe_ready]
        for pod in starting[:count]:
            pod.probe_ready = True

    def later(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def serving(self) -> dict[str, int]:
        """Ready pods per version that take requests: the Service's endpoints (the replicas router),
        or of the versions the route weights (the gatewayAPI router)."""
        found: dict[str, int] = {}
        for d in self.deployments.values():
            ready = sum(pod.ready for pod in d.pods)
            if self.route is not None and not self.route.get(d.version):
                continue
            if ready:
                found[d.version] = found.get(d.version, 0) + ready
        return found

    def warm_serving(self) -> list[str]:
        """Deployments the plan calls warm whose pods take requests (none may)."""
        return [
            d.name for d in self.deployments.values() if d.role == "warm" and any(p.ready for p in d.pods)
        ]

    def pods_of(self, version: str) -> set[str]:
        return {pod.name for d in self.deployments.values() if d.version == version for pod in d.pods}
