"""Canary under both routers: start, weight change, promotion, removal, against the real API server."""

from __future__ import annotations

from typing import Any

import pytest
from harness import (
    Kube,
    available_at,
    model_deployment,
    ready_at,
    registered,
    wait_events,
    wait_for,
)
from mlflow import MlflowClient

from mlflowserver import MlflowServer
from operatorprocess import OperatorProcess
from support.registry import quick_versions


def replicas(kube: Kube, namespace: str, track: str) -> int | None:
    deployment = kube.get("deployment", f"sentiment-{track}", namespace)
    return None if deployment is None else int(deployment["spec"]["replicas"])


def route_weights(kube: Kube, namespace: str) -> dict[str, int] | None:
    route = kube.get("httproute", "sentiment", namespace)
    if route is None:
        return None
    return {ref["name"]: ref["weight"] for ref in route["spec"]["rules"][0]["backendRefs"]}


def split(kube: Kube, namespace: str, router: str) -> Any:
    """What decides the split: replica counts (replicas router) or route weights (gatewayAPI)."""
    if router == "replicas":
        return replicas(kube, namespace, "production"), replicas(kube, namespace, "canary")
    return route_weights(kube, namespace)


@pytest.mark.parametrize("router", ["replicas", "gatewayAPI"])
def test_canary_weight_promotion_and_removal(
    kube: Kube,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    registry: MlflowClient,
    namespace: str,
    model_name: str,
    router: str,
) -> None:
    registered(registry, model_name, 3, production="2", canary="3")
    manifest = model_deployment(
        "sentiment",
        model_name,
        mlflow_server.url,
        replicas=10,
        canary={"alias": "canary", "weight": 20},
        traffic={"router": router},
    )
    kube.apply(manifest, namespace=namespace)

    # Version 3 runs beside version 2 and gets 20%.
    wait_for(lambda: available_at(kube, namespace, "sentiment-canary", "3"), timeout=60, what="canary at v3")
    wait_for(
        lambda: available_at(kube, namespace, "sentiment-production", "2"),
        timeout=60,
        what="production at v2",
    )
    resource = wait_for(
        lambda: ready_at(kube, namespace, "sentiment", "2", "3"), timeout=60, what="Ready 2+3"
    )
    assert resource["status"]["traffic"]["canaryWeight"] == 20
    if router == "replicas":
        assert split(kube, namespace, router) == (8, 2)
        service = kube.get("service", "sentiment", namespace)
        assert service is not None
        assert "aliasroll.io/track" not in service["spec"]["selector"], "one Service selects both tracks"
    else:
        assert split(kube, namespace, router) == {"sentiment-production": 80, "sentiment-canary": 20}
        assert replicas(kube, namespace, "production") == 10
        assert replicas(kube, namespace, "canary") == 2
        for track in ("production", "canary"):
            service = kube.get("service", f"sentiment-{track}", namespace)
            assert service is not None
            assert service["spec"]["selector"]["aliasroll.io/track"] == track

    # Weight change.
    manifest["spec"]["canary"]["weight"] = 50
    kube.apply(manifest, namespace=namespace)
    expected = (5, 5) if router == "replicas" else {"sentiment-production": 50, "sentiment-canary": 50}
    wait_for(lambda: split(kube, namespace, router) == expected, timeout=30, what=f"split {expected}")
    wait_for(
        lambda: (
            (kube.get("mdep", "sentiment", namespace) or {})
            .get("status", {})
            .get("traffic", {})
            .get("canaryWeight")
            == 50
        ),
        timeout=30,
        what="status weight 50",
    )

    # Promotion: @production moves to the canary's version; the split ends with 3 serving everything.
    registry.set_registered_model_alias(model_name, "production", "3")
    wait_for(
        lambda: available_at(kube, namespace, "sentiment-production", "3"),
        timeout=60,
        what="production rolled to v3",
    )
    wait_for(
        lambda: kube.get("deployment", "sentiment-canary", namespace) is None,
        timeout=30,
        what="canary Deployment removed after the promotion",
    )
    resource = wait_for(
        lambda: ready_at(kube, namespace, "sentiment", "3"), timeout=30, what="Ready at 3 alone"
    )
    assert replicas(kube, namespace, "production") == 10
    if router == "gatewayAPI":
        assert route_weights(kube, namespace) == {"sentiment-production": 100}
        assert kube.get("service", "sentiment-canary", namespace) is None
    assert "canary" not in resource["status"]

    # A new canary, then its removal by deleting the alias.
    quick_versions(registry, model_name, 1, create=False)  # version 4
    registry.set_registered_model_alias(model_name, "canary", "4")
    wait_for(lambda: available_at(kube, namespace, "sentiment-canary", "4"), timeout=60, what="canary at v4")
    registry.delete_registered_model_alias(model_name, "canary")
    wait_for(
        lambda: kube.get("deployment", "sentiment-canary", namespace) is None,
        timeout=30,
        what="canary removed when @canary is deleted",
    )
    wait_for(lambda: ready_at(kube, namespace, "sentiment", "3"), timeout=30, what="Ready at 3 alone again")
    wait_events(
        kube, namespace, "sentiment", "CanaryStarted", "TrafficShifted", "CanaryPromoted", "CanaryRemoved"
    )
