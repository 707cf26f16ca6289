"""kwok's fake pods honour readiness gates as a kubelet does (localenv/localkube/kwok.py).

A pod with spec.readinessGates is Ready only when its containers are and every gate's condition is
"True" in status.conditions; a gate that turns False makes it not Ready again (ContainersReady stays
True), and True again makes it Ready. The gates' conditions are whoever writes them (here the test,
as a controller would: a strategic merge PATCH of pods/status); kwok never writes them. Pods without
gates are Ready at once, or after the ready-delay annotation, as before.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from harness import Kube, wait_for

from localcluster import READY_DELAY_ANNOTATION

GATE = "aliasroll.io/routed"
# How long a pod may take to follow its gate: kwok acts on the pod's watch event at once (about
# 0.1 s here), with room for a loaded machine.
FOLLOW = 10


def deployment(
    name: str, replicas: int, *, gates: bool, annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    pod_spec: dict[str, Any] = {
        "nodeSelector": {"type": "kwok"},  # the local cluster's fake node
        "containers": [{"name": "serve", "image": "registry.invalid/serve:1"}],
    }
    if gates:
        pod_spec["readinessGates"] = [{"conditionType": GATE}]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": annotations or {}},
                "spec": pod_spec,
            },
        },
    }


def conditions(pod: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}


def pods(kube: Kube, namespace: str, app: str) -> list[dict[str, Any]]:
    return [
        p for p in kube.list("pods", namespace, f"app={app}") if not p["metadata"].get("deletionTimestamp")
    ]


def set_gate(kube: Kube, namespace: str, pod: str, status: str) -> float:
    """The gate's condition written as a controller would (strategic merge of pods/status); returns
    the time it was written."""
    patch = {"status": {"conditions": [{"type": GATE, "status": status, "reason": "Test"}]}}
    kube.cluster.kubectl(
        "patch",
        "pod",
        pod,
        "-n",
        namespace,
        "--subresource=status",
        "--type=strategic",
        "-p",
        json.dumps(patch),
    )
    return time.monotonic()


@contextmanager
def ready_watch(kube: Kube, namespace: str, app: str) -> Iterator[list[tuple[str, str]]]:
    """Every (pod, Ready status) the API server records for the app's pods while open, in order: a
    watch misses no change, where polling could miss a pod Ready for a moment."""
    command = [
        str(kube.cluster.bin_dir / "kubectl"),
        f"--kubeconfig={kube.cluster.kubeconfig}",
        "get",
        "pods",
        "-n",
        namespace,
        "-l",
        f"app={app}",
        "--watch",
        "-o",
        'jsonpath={.metadata.name} {.status.conditions[?(@.type=="Ready")].status}{"\\n"}',
    ]
    seen: list[tuple[str, str]] = []
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            name, _, ready = line.strip().partition(" ")
            seen.append((name, ready))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        yield seen
    finally:
        process.terminate()
        process.wait(timeout=10)
        reader.join(timeout=10)
        assert process.stdout is not None
        process.stdout.close()


def wait_pod(kube: Kube, namespace: str, name: str, expected: dict[str, str], what: str) -> dict[str, Any]:
    """The pod once its conditions include `expected` (type -> status)."""

    def check() -> dict[str, Any] | None:
        pod = kube.get("pod", name, namespace)
        seen = conditions(pod or {})
        return pod if all(seen.get(t) == s for t, s in expected.items()) else None

    found: dict[str, Any] = wait_for(check, timeout=FOLLOW, what=f"{name}: {what}", interval=0.05)
    return found


def test_pods_follow_their_readiness_gate(kube: Kube, namespace: str) -> None:
    with ready_watch(kube, namespace, "gated") as seen:
        time.sleep(1)  # the watch open before the pods exist
        kube.apply(deployment("gated", 2, gates=True), namespace=namespace)
        running = wait_for(
            lambda: (
                found
                if len(found := pods(kube, namespace, "gated")) == 2
                and all(conditions(p).get("ContainersReady") == "True" for p in found)
                else None
            ),
            timeout=60,
            what="2 gated pods with their containers ready",
        )
        names = sorted(p["metadata"]["name"] for p in running)
        # Containers ready, no gate condition yet: not Ready, and it stays so.
        time.sleep(1.5)
    # Not Ready even for a moment: the watch saw each pod created (no Ready), then Ready False.
    assert {name for name, _ in seen} == set(names), seen
    assert {ready for _, ready in seen} == {"", "False"}, seen
    for name in names:
        pod = kube.get("pod", name, namespace)
        assert pod is not None
        assert pod["status"]["phase"] == "Running"
        seen = conditions(pod)
        assert seen.get("ContainersReady") == "True", seen
        assert seen.get("Ready") == "False", seen
        assert GATE not in seen, seen  # kwok writes no gate condition of its own
        ready = next(c for c in pod["status"]["conditions"] if c["type"] == "Ready")
        assert ready["reason"] == "ReadinessGatesNotReady", ready
        assert GATE in ready["message"], ready
    gated = kube.get("deployment", "gated", namespace)
    assert gated is not None
    assert not gated["status"].get("readyReplicas"), gated["status"]

    # The gate True: Ready.
    for name in names:
        written = set_gate(kube, namespace, name, "True")
        wait_pod(kube, namespace, name, {"Ready": "True", GATE: "True"}, "Ready once the gate is True")
        print(f"{name}: Ready True {time.monotonic() - written:.2f} s after the gate turned True")
    wait_for(
        lambda: (
            (kube.get("deployment", "gated", namespace) or {}).get("status", {}).get("readyReplicas") == 2
        ),
        timeout=FOLLOW,
        what="the Deployment's 2 pods ready",
    )

    # One pod's gate False: that pod alone is not Ready; its containers still are, the gate as written.
    first, second = names
    written = set_gate(kube, namespace, first, "False")
    pod = wait_pod(kube, namespace, first, {"Ready": "False"}, "not Ready once the gate is False")
    print(f"{first}: Ready False {time.monotonic() - written:.2f} s after the gate turned False")
    assert conditions(pod) | {"PodScheduled": "True"} == {
        "PodScheduled": "True",
        "Initialized": "True",
        "ContainersReady": "True",
        "Ready": "False",
        GATE: "False",
    }, conditions(pod)
    ready = next(c for c in pod["status"]["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "ReadinessGatesNotReady", ready
    assert f'readiness gate "{GATE}" is not "True", but False' in ready["message"], ready
    assert conditions(kube.get("pod", second, namespace) or {}).get("Ready") == "True"
    wait_for(
        lambda: (
            (kube.get("deployment", "gated", namespace) or {}).get("status", {}).get("readyReplicas") == 1
        ),
        timeout=FOLLOW,
        what="the Deployment's ready pods down to 1",
    )

    # True again: Ready again, with no reason left over.
    written = set_gate(kube, namespace, first, "True")
    pod = wait_pod(
        kube, namespace, first, {"Ready": "True", GATE: "True"}, "Ready again once the gate is True"
    )
    print(f"{first}: Ready True {time.monotonic() - written:.2f} s after the gate turned True again")
    ready = next(c for c in pod["status"]["conditions"] if c["type"] == "Ready")
    assert not ready.get("reason"), ready
    assert not ready.get("message"), ready

    # Nothing flips back on its own: the gates stay as written, both pods Ready.
    time.sleep(1.5)
    for name in names:
        seen = conditions(kube.get("pod", name, namespace) or {})
        assert (seen.get("Ready"), seen.get("ContainersReady"), seen.get(GATE)) == ("True", "True", "True"), (
            seen
        )


def test_pods_without_gates_are_ready_as_before(kube: Kube, namespace: str) -> None:
    kube.apply(deployment("plain", 2, gates=False), namespace=namespace)
    kube.apply(
        deployment("delayed", 1, gates=False, annotations={READY_DELAY_ANNOTATION: "3s"}), namespace=namespace
    )

    plain = wait_for(
        lambda: (
            found
            if len(found := pods(kube, namespace, "plain")) == 2
            and all(conditions(p).get("Ready") == "True" for p in found)
            else None
        ),
        timeout=30,
        what="2 pods without gates Ready",
    )
    for pod in plain:
        assert conditions(pod) == {
            "PodScheduled": "True",
            "Initialized": "True",
            "ContainersReady": "True",
            "Ready": "True",
        }, conditions(pod)
        assert pod["status"]["phase"] == "Running"

    # The ready-delay annotation still holds a pod Pending for its delay.
    [delayed] = wait_for(lambda: pods(kube, namespace, "delayed"), timeout=30, what="the delayed pod")
    created = time.monotonic()
    assert conditions(delayed).get("Ready") != "True", delayed["status"]
    ready = wait_for(
        lambda: (
            pod
            if conditions(pod := kube.get("pod", delayed["metadata"]["name"], namespace) or {}).get("Ready")
            == "True"
            else None
        ),
        timeout=30,
        what="the delayed pod Ready",
        interval=0.1,
    )
    assert time.monotonic() - created > 1.5, "Ready before its delay"
    assert ready["status"]["phase"] == "Running"
