"""The API resources the operator reads and writes, as lightkube resource classes."""

from __future__ import annotations

from typing import Any

from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Service
from lightkube.resources.policy_v1 import PodDisruptionBudget

from aliasroll.spec import GROUP, KIND, PLURAL, VERSION

ModelDeployment = create_namespaced_resource(GROUP, VERSION, KIND, PLURAL)
HTTPRoute = create_namespaced_resource("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes")

# Every kind the operator may own, in apply order (workloads before the objects that route to them).
OWNED_KINDS: dict[tuple[str, str], Any] = {
    ("apps/v1", "Deployment"): Deployment,
    # After its Deployment: a budget guards pods that exist (one per track, named like the Deployment).
    ("policy/v1", "PodDisruptionBudget"): PodDisruptionBudget,
    ("v1", "Service"): Service,
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): HTTPRoute,
    # The holdout gate's Job (spec.canary.gate): a Job of its own per candidate version and gate.
    ("batch/v1", "Job"): Job,
}


def resource_for(api_version: str, kind: str) -> Any:
    try:
        return OWNED_KINDS[(api_version, kind)]
    except KeyError:
        raise ValueError(f"the operator does not manage {kind} ({api_version})") from None
