"""The operator's allow-lists (aliasroll.allowlists): what a ModelDeployment may cause beyond its own
namespace's pods, by named case; the settings that fill them; and a refused spec in a pass."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from builders import FixedObjects, spec
from lightkube import AsyncClient
from reconciler_fakes import BODY, Cluster, Events, Registry, deployment, ready

from aliasroll import reasons
from aliasroll.allowlists import AllowLists, check
from aliasroll.config import OperatorConfig
from aliasroll.controller.reconciler import Reconciler
from aliasroll.errors import InvalidSpec, NotAllowed
from aliasroll.planning.workloads import WorkloadDefaults
from aliasroll.registry.poller import RegistryPoller

NAMESPACE = "team-a"


def pod_spec(**pod: Any) -> dict[str, Any]:
    return {"serving": {"podTemplate": {"spec": pod}}}


def gateway(*refs: dict[str, Any], hostnames: tuple[str, ...] = ()) -> dict[str, Any]:
    settings: dict[str, Any] = {"parentRefs": list(refs)}
    if hostnames:
        settings["hostnames"] = list(hostnames)
    return {"traffic": {"router": "gatewayAPI", "gatewayAPI": settings}}


DEFAULTS = AllowLists()
SOME = AllowLists(
    runtime_classes=("gvisor", "kata-*"),
    priority_classes=("serving-*",),
    gateways=("gateways/public", "infra/*", "{namespace}-gw/*"),
    hostnames=("*.{namespace}.apps.example.com", "models.example.com"),
)

# (name, spec overrides, allow-lists, the field refused or None, a setting the message names)
CASES: list[tuple[str, dict[str, Any], AllowLists, str | None, str]] = [
    ("no class, no route: always allowed", {}, DEFAULTS, None, ""),
    (
        "a RuntimeClass, by default: refused",
        pod_spec(runtimeClassName="nvidia"),
        DEFAULTS,
        "spec.serving.podTemplate.spec.runtimeClassName",
        "ALIASROLL_ALLOWED_RUNTIME_CLASSES",
    ),
    ("a RuntimeClass listed", pod_spec(runtimeClassName="gvisor"), SOME, None, ""),
    ("a RuntimeClass a pattern matches", pod_spec(runtimeClassName="kata-qemu"), SOME, None, ""),
    (
        "a RuntimeClass not listed",
        pod_spec(runtimeClassName="runc-privileged"),
        SOME,
        "spec.serving.podTemplate.spec.runtimeClassName",
        "ALIASROLL_ALLOWED_RUNTIME_CLASSES",
    ),
    (
        "any RuntimeClass under *",
        pod_spec(runtimeClassName="nvidia"),
        AllowLists(runtime_classes=("*",)),
        None,
        "",
    ),
    (
        "a PriorityClass, by default: refused",
        pod_spec(priorityClassName="system-cluster-critical"),
        DEFAULTS,
        "spec.serving.podTemplate.spec.priorityClassName",
        "ALIASROLL_ALLOWED_PRIORITY_CLASSES",
    ),
    ("a PriorityClass a pattern matches", pod_spec(priorityClassName="serving-high"), SOME, None, ""),
    (
        "a PriorityClass not listed",
        pod_spec(priorityClassName="system-node-critical"),
        SOME,
        "spec.serving.podTemplate.spec.priorityClassName",
        "ALIASROLL_ALLOWED_PRIORITY_CLASSES",
    ),
    ("the route on the stable Service (no parentRefs)", gateway(), DEFAULTS, None, ""),
    ("a Gateway of the resource's own namespace, by default", gateway({"name": "own"}), DEFAULTS, None, ""),
    (
        "a Gateway naming its own namespace, by default",
        gateway({"name": "own", "namespace": NAMESPACE}),
        DEFAULTS,
        None,
        "",
    ),
    (
        "a Gateway of another namespace, by default: refused",
        gateway({"name": "public", "namespace": "gateways"}),
        DEFAULTS,
        "spec.traffic.gatewayAPI.parentRefs[0]",
        "ALIASROLL_ALLOWED_GATEWAYS",
    ),
    (
        "a Gateway listed",
        gateway({"name": "public", "namespace": "gateways"}, hostnames=("models.example.com",)),
        SOME,
        None,
        "",
    ),
    (
        "any Gateway of a namespace listed with *",
        gateway({"name": "edge", "namespace": "infra"}, hostnames=("models.example.com",)),
        SOME,
        None,
        "",
    ),
    (
        "a Gateway of the namespace's own gateway namespace ({namespace})",
        gateway({"name": "edge", "namespace": f"{NAMESPACE}-gw"}, hostnames=("models.example.com",)),
        SOME,
        None,
        "",
    ),
    (
        "another Gateway of a namespace listed by name: refused",
        gateway({"name": "internal", "namespace": "gateways"}),
        SOME,
        "spec.traffic.gatewayAPI.parentRefs[0]",
        "ALIASROLL_ALLOWED_GATEWAYS",
    ),
    (
        "the second parent refused, the first allowed",
        gateway({"name": "own"}, {"name": "public", "namespace": "kube-system"}),
        SOME,
        "spec.traffic.gatewayAPI.parentRefs[1]",
        "ALIASROLL_ALLOWED_GATEWAYS",
    ),
    (
        "a mesh Service of another namespace: refused like a Gateway",
        gateway({"group": "", "kind": "Service", "name": "payments", "namespace": "billing"}),
        DEFAULTS,
        "spec.traffic.gatewayAPI.parentRefs[0]",
        "ALIASROLL_ALLOWED_GATEWAYS",
    ),
    (
        "any hostname when the setting is unset",
        gateway({"name": "own"}, hostnames=("www.bank.example",)),
        DEFAULTS,
        None,
        "",
    ),
    (
        "a hostname under the namespace's own domain",
        gateway({"name": "own"}, hostnames=(f"sentiment.{NAMESPACE}.apps.example.com",)),
        SOME,
        None,
        "",
    ),
    (
        "a wildcard hostname inside the allowed one",
        gateway({"name": "own"}, hostnames=(f"*.models.{NAMESPACE}.apps.example.com",)),
        SOME,
        None,
        "",
    ),
    (
        "another namespace's domain: refused",
        gateway({"name": "own"}, hostnames=("sentiment.team-b.apps.example.com",)),
        SOME,
        "spec.traffic.gatewayAPI.hostnames[0]",
        "ALIASROLL_ALLOWED_HOSTNAMES",
    ),
    (
        "a wildcard wider than the allowed ones: refused",
        gateway({"name": "own"}, hostnames=("models.example.com", "*.example.com")),
        SOME,
        "spec.traffic.gatewayAPI.hostnames[1]",
        "ALIASROLL_ALLOWED_HOSTNAMES",
    ),
    (
        "no hostnames on another namespace's Gateway while hostnames are restricted: refused",
        gateway({"name": "public", "namespace": "gateways"}),
        SOME,
        "spec.traffic.gatewayAPI.hostnames",
        "ALIASROLL_ALLOWED_HOSTNAMES",
    ),
    (
        "no hostnames on the namespace's own Gateway while hostnames are restricted",
        gateway({"name": "own"}),
        SOME,
        None,
        "",
    ),
]


@pytest.mark.parametrize(
    ("name", "overrides", "allowed", "refused", "setting"), CASES, ids=[c[0] for c in CASES]
)
def test_allow_lists(
    name: str, overrides: dict[str, Any], allowed: AllowLists, refused: str | None, setting: str
) -> None:
    wanted = spec(**overrides)
    if refused is None:
        check(wanted, namespace=NAMESPACE, allowed=allowed)
        return
    with pytest.raises(NotAllowed) as caught:
        check(wanted, namespace=NAMESPACE, allowed=allowed)
    assert caught.value.field_path == refused
    assert caught.value.reason == reasons.NOT_ALLOWED
    assert setting in caught.value.message
    assert caught.value.message.startswith(f"{refused}: ")
    assert isinstance(caught.value, InvalidSpec), "handled as an invalid spec: nothing applied"


def test_the_defaults_are_the_safe_choice() -> None:
    config = OperatorConfig.from_env({})
    assert config.allowed == AllowLists(runtime_classes=(), priority_classes=(), gateways=(), hostnames=None)


SETTINGS = [
    ("unset", {}, AllowLists()),
    (
        "empty values keep the defaults",
        dict.fromkeys(("ALIASROLL_ALLOWED_RUNTIME_CLASSES", "ALIASROLL_ALLOWED_HOSTNAMES"), ""),
        AllowLists(),
    ),
    (
        "commas and spaces separate",
        {
            "ALIASROLL_ALLOWED_RUNTIME_CLASSES": "gvisor, kata-*",
            "ALIASROLL_ALLOWED_PRIORITY_CLASSES": "serving-low serving-high",
            "ALIASROLL_ALLOWED_GATEWAYS": "gateways/public,infra/*",
            "ALIASROLL_ALLOWED_HOSTNAMES": "*.{namespace}.apps.example.com",
        },
        AllowLists(
            runtime_classes=("gvisor", "kata-*"),
            priority_classes=("serving-low", "serving-high"),
            gateways=("gateways/public", "infra/*"),
            hostnames=("*.{namespace}.apps.example.com",),
        ),
    ),
    ("any Gateway", {"ALIASROLL_ALLOWED_GATEWAYS": "*"}, AllowLists(gateways=("*",))),
]


@pytest.mark.parametrize(("name", "env", "allowed"), SETTINGS, ids=[s[0] for s in SETTINGS])
def test_settings(name: str, env: dict[str, str], allowed: AllowLists) -> None:
    assert OperatorConfig.from_env(env).allowed == allowed


@pytest.mark.parametrize("entry", ["public", "/public", "gateways/", "a/b/c"])
def test_a_gateway_entry_must_be_namespace_and_name(entry: str) -> None:
    with pytest.raises(SystemExit, match="ALIASROLL_ALLOWED_GATEWAYS"):
        OperatorConfig.from_env({"ALIASROLL_ALLOWED_GATEWAYS": f"gateways/public,{entry}"})


def body_with(spec_overrides: dict[str, Any]) -> dict[str, Any]:
    return {**BODY, "spec": {**BODY["spec"], **spec_overrides}}


def run_pass(cluster: Cluster, body: dict[str, Any], allowed: AllowLists) -> Events:
    events = Events()
    reconciler = Reconciler(
        client=cast(AsyncClient, cluster),
        objects=FixedObjects(cluster.objects.values()),
        registry=cast(RegistryPoller, Registry()),
        events=events,
        defaults=WorkloadDefaults(image="aliasroll/serving:test"),
        allowed=allowed,
    )
    asyncio.run(reconciler.reconcile(body, wake=lambda: None))
    return events


def test_a_refused_value_changes_nothing_and_says_which_setting() -> None:
    # Version 1 serves; the spec now asks for a RuntimeClass and @production moved to 2.
    cluster = Cluster([deployment("1")])
    events = run_pass(cluster, body_with(pod_spec(runtimeClassName="nvidia")), AllowLists())
    assert cluster.applied == [], "nothing is applied or pruned"
    assert cluster.status is not None
    assert cluster.status["production"]["version"] == "1", "the version already serving keeps serving"
    status, reason, message = ready(cluster.status)
    assert (status, reason) == ("False", reasons.NOT_ALLOWED)
    assert "ALIASROLL_ALLOWED_RUNTIME_CLASSES" in message
    assert "'nvidia'" in message
    assert [(e.type, e.reason) for e in events.posted] == [("Warning", reasons.NOT_ALLOWED)]


def test_a_value_allowed_by_the_setting_rolls_out() -> None:
    cluster = Cluster([deployment("1")])
    run_pass(cluster, body_with(pod_spec(runtimeClassName="nvidia")), AllowLists(runtime_classes=("nvidia",)))
    assert ("Deployment", "sentiment-production") in cluster.applied
