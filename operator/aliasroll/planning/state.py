"""The planner's inputs and small outputs, as frozen dataclasses."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from aliasroll.errors import AliasrollError
from aliasroll.registry.types import VersionInfo
from aliasroll.spec import Track


@dataclass(frozen=True)
class ServedVersion:
    """A pinned model version as the cluster runs it."""

    model: str
    version: str
    run_id: str | None = None

    @property
    def uri(self) -> str:
        # Never the alias URI: a restarted pod must load exactly this version.
        return f"models:/{self.model}/{self.version}"

    @classmethod
    def of(cls, info: VersionInfo) -> ServedVersion:
        return cls(model=info.model, version=info.version, run_id=info.run_id)


@dataclass(frozen=True)
class AliasTarget:
    """What one alias points at: `version` None when the alias is not set; `info` None when the
    version it names does not exist."""

    alias: str
    version: str | None
    info: VersionInfo | None = None


@dataclass(frozen=True)
class RegistryView:
    """The registry's answer for one resource; `error` set when there is no usable answer."""

    model: str
    production: AliasTarget | None = None
    canary: AliasTarget | None = None
    error: AliasrollError | None = None


@dataclass(frozen=True)
class ObservedWorkload:
    """One owned Deployment, reduced to what the planner decides on."""

    name: str
    track: Track
    model: str | None  # from the pinned model URI in the pod template
    version: str | None
    replicas: int
    available: int
    rolled_out: bool
    stalled: str | None = None  # the Deployment's own message when it exceeded its progress deadline
    run_id: str | None = None
    # Why a pod of this version cannot start (its container's termination message), if one cannot.
    pod_failure: str | None = None


@dataclass(frozen=True)
class ChildRef:
    """Any object this resource owns, for pruning."""

    api_version: str
    kind: str
    name: str
    uid: str | None = None


@dataclass(frozen=True)
class ObservedPod:
    """A pod of a version-mode Deployment: its readiness gate and whether it takes requests."""

    name: str
    routed: bool | None  # the gate condition aliasroll.io/routed; None: not set yet (a new pod)
    ready: bool  # Ready: routed and passing its probe, an endpoint of the Services
    probe_ready: bool  # ContainersReady: passing its probe, routed or not


@dataclass(frozen=True)
class ObservedVersion:
    """One version-mode Deployment (spec.rollback: a Deployment per version), reduced."""

    name: str
    model: str
    version: str
    replicas: int
    available: int  # Ready pods: what takes requests now
    rolled_out: bool  # every pod asked for exists and runs the template
    run_id: str | None = None
    stalled: str | None = None
    pod_failure: str | None = None
    pods: tuple[ObservedPod, ...] = ()

    @property
    def probe_ready(self) -> int:
        return sum(1 for pod in self.pods if pod.probe_ready)


@dataclass(frozen=True)
class ObservedGateJob:
    """A holdout gate's Job (spec.canary.gate), reduced: whether it ended, and what its pod said."""

    name: str
    version: str  # the candidate version it judges
    digest: str  # what it judges with (planning/gate.py's digest)
    finished: bool  # the Job's Complete or Failed condition is True
    deadline_exceeded: bool = False  # Failed past its activeDeadlineSeconds
    message: str | None = None  # its evaluator's termination message, as the pod's status keeps it


@dataclass(frozen=True)
class ObservedState:
    workloads: Mapping[Track, ObservedWorkload] = field(default_factory=dict)
    children: tuple[ChildRef, ...] = ()
    versions: tuple[ObservedVersion, ...] = ()  # version mode's Deployments, by name
    gate_jobs: tuple[ObservedGateJob, ...] = ()  # the holdout gate's Jobs

    def gate_job(self, version: str, digest: str) -> ObservedGateJob | None:
        return next((job for job in self.gate_jobs if (job.version, job.digest) == (version, digest)), None)


@dataclass(frozen=True)
class EventRecord:
    """A Kubernetes event to post about the resource."""

    type: str  # Normal or Warning
    reason: str
    message: str
