"""kwok, the fake node: pods scheduled to it become Running and Ready, though no container ever runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import ClusterError

NODE_NAME = "kwok-node-0"
POD_CIDR = "10.244.0.0/16"
KWOK_STAGE_DIRS = ("node/fast", "node/heartbeat-with-lease", "pod/fast")
#: A fake pod becomes Ready this long after it starts (a duration such as "1500ms") when it carries
#: this annotation: tests that watch capacity through a rollout need pods that take time, as real
#: ones do. Without it, fake pods are Ready at once.
READY_DELAY_ANNOTATION = "kwok.localenv/ready-delay"


def stage_files(bin_dir: Path, state_dir: Path) -> list[Path]:
    stages = sorted(
        f
        for sub in KWOK_STAGE_DIRS
        for f in (bin_dir / "kwok-stages" / sub).glob("*.yaml")
        if f.name != "kustomization.yaml"
    )
    if not stages:
        raise ClusterError(f"no kwok stage files under {bin_dir / 'kwok-stages'}")
    return [_with_ready_delay(f, state_dir) if f.name == "pod-ready.yaml" else f for f in stages]


def _with_ready_delay(stage: Path, state_dir: Path) -> Path:
    """kwok's pod-ready stage, delayed by the pod's READY_DELAY_ANNOTATION when it has one."""
    text = stage.read_text()
    anchor = "\nspec:\n"
    if anchor not in text:
        raise ClusterError(f"{stage}: no top-level spec to add a delay to")
    delay = (
        "  delay:\n"
        "    durationMilliseconds: 0\n"
        "    durationFrom:\n"
        "      jq:\n"
        f"        expression: '.metadata.annotations[\"{READY_DELAY_ANNOTATION}\"]'\n"
    )
    delayed = state_dir / "kwok-pod-ready.yaml"
    delayed.write_text(text.replace(anchor, anchor + delay, 1))
    return delayed


def args(*, kubeconfig: Path, stages: list[Path]) -> list[str]:
    return [
        f"--kubeconfig={kubeconfig}",
        # Only nodes carrying the annotation: a real node beside it is left to its kubelet.
        "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
        f"--cidr={POD_CIDR}",
        "--node-ip=127.0.0.1",
        # Without a KwokConfiguration file this defaults to 0: no node Lease, so the node-lifecycle
        # controller would mark the node NotReady (and its pods not Ready) every grace period.
        "--node-lease-duration-seconds=40",
        *(f"--config={f}" for f in stages),
    ]


def node_manifest(name: str) -> dict[str, Any]:
    # Pods are free on a fake node: room for a thousand ModelDeployments and their rollouts, twice over.
    resources = {"cpu": "1000", "memory": "4Ti", "pods": "5000"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "type": "kwok",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node-role.kubernetes.io/agent": "",
            },
        },
        "spec": {},
        "status": {
            "allocatable": resources,
            "capacity": resources,
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": "fake",
                "kubeProxyVersion": "fake",
            },
            "phase": "Running",
        },
    }


def node_ready(node: dict[str, Any] | None) -> bool:
    """Ready, and free of the node.kubernetes.io/* taints (not-ready, unreachable, ...)."""
    if node is None:
        return False
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in node.get("status", {}).get("conditions", [])
    )
    tainted = any(
        t.get("key", "").startswith("node.kubernetes.io/") for t in node.get("spec", {}).get("taints", [])
    )
    return ready and not tainted
