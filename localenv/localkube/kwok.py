"""kwok, the fake node: pods scheduled to it become Running and Ready (as their readiness gates allow),
though no container ever runs."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from .common import ClusterError

NODE_NAME = "kwok-node-0"
POD_CIDR = "10.244.0.0/16"
KWOK_STAGE_DIRS = ("node/fast", "node/heartbeat-with-lease", "pod/fast")
#: A fake Job pod ends with these as its container's termination message and exit code (kwok's
#: pod-complete stage, rewritten): how a test stands in for the holdout gate's evaluator.
TERMINATION_MESSAGE_ANNOTATION = "test.kwok.aliasroll/termination-message"
EXIT_CODE_ANNOTATION = "test.kwok.aliasroll/exit-code"
#: A fake pod becomes Ready this long after it starts (a duration such as "1500ms") when it carries
#: this annotation: tests that watch capacity through a rollout need pods that take time, as real
#: ones do. Without it, fake pods are Ready at once.
READY_DELAY_ANNOTATION = "kwok.localenv/ready-delay"

# Readiness gates (spec.readinessGates) as the kubelet has them: a pod is Ready when its containers
# are and every gate's condition is in status.conditions with status "True"; a gate that turns False
# later makes the pod not Ready again (ContainersReady stays True). kwok's own pod-ready stage marks
# every gate True itself, which would overwrite what another controller writes.
#
# $ready ("True" or "False") and $message from the pod's gates, as the kubelet words them.
_GATES_READY = """\
{{ $ready := "True" }}
{{ $message := "" }}
{{ range .spec.readinessGates }}
{{ $gate := .conditionType }}
{{ $status := "" }}
{{ range $.status.conditions }}{{ if eq .type $gate }}{{ $status = .status }}{{ end }}{{ end }}
{{ if and (ne $status "True") (eq $ready "True") }}
{{ $ready = "False" }}
{{ if $status }}
{{ $message = printf "the status of pod readiness gate %q is not \\"True\\", but %s" $gate $status }}
{{ else }}
{{ $message = printf "corresponding condition of pod readiness gate %q does not exist." $gate }}
{{ end }}
{{ end }}
{{ end }}
"""
# The same, as a jq expression for a stage selector: whether every gate's condition is "True".
_GATES_TRUE_JQ = (
    "[.spec.readinessGates[]?.conditionType as $gate"
    ' | any(.status.conditions[]?; .type == $gate and .status == "True")] | all'
)
_READY_TRUE_JQ = 'any(.status.conditions[]?; .type == "Ready" and .status == "True")'
# A running pod with gates whose Ready disagrees with them (a gate's condition written after the pod
# became Running, or changed since): Ready again from the gates, and only Ready (a strategic merge
# of status.conditions by type keeps every other condition, the gates' among them).
_GATES_STAGE = f"""\
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-readiness-gates
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - jq:
        key: '.metadata.deletionTimestamp'
        operator: DoesNotExist
    - jq:
        key: '.status.phase'
        operator: In
        values: ['Running']
    - jq:
        key: '.spec.readinessGates[]?.conditionType'
        operator: Exists
    - jq:
        key: '.status.conditions[]? | select(.type == "ContainersReady") | .status'
        operator: In
        values: ['True']
    - jq:
        key: '({_GATES_TRUE_JQ}) != ({_READY_TRUE_JQ})'
        operator: In
        values: ['true']
  steps:
  - patch:
      subresource: status
      root: status
      type: strategic
      template: |
{textwrap.indent(_GATES_READY, " " * 8)}\
        conditions:
        - type: Ready
          status: {{{{ $ready | Quote }}}}
          reason: {{{{ if ne $ready "True" }}}}ReadinessGatesNotReady{{{{ end }}}}
          message: {{{{ $message | Quote }}}}
          lastTransitionTime: {{{{ Now | Quote }}}}
"""


def stage_files(bin_dir: Path, state_dir: Path) -> list[Path]:
    stages = sorted(
        f
        for sub in KWOK_STAGE_DIRS
        for f in (bin_dir / "kwok-stages" / sub).glob("*.yaml")
        if f.name != "kustomization.yaml"
    )
    if not stages:
        raise ClusterError(f"no kwok stage files under {bin_dir / 'kwok-stages'}")
    gates = state_dir / "kwok-pod-readiness-gates.yaml"
    gates.write_text(_GATES_STAGE)
    rewritten = {"pod-ready.yaml": _pod_ready, "pod-complete.yaml": _pod_complete}
    return [rewritten[f.name](f, state_dir) if f.name in rewritten else f for f in stages] + [gates]


def _pod_ready(stage: Path, state_dir: Path) -> Path:
    """kwok's pod-ready stage, delayed by the pod's READY_DELAY_ANNOTATION when it has one, and Ready
    only when the pod's readiness gates are (their conditions left to whoever writes them)."""
    text = _with_readiness_gates(stage, _with_ready_delay(stage, stage.read_text()))
    ready = state_dir / "kwok-pod-ready.yaml"
    ready.write_text(text)
    return ready


def _pod_complete(stage: Path, state_dir: Path) -> Path:
    """kwok's pod-complete stage (a Job's pod ends), with the termination message and exit code a
    test put in the pod's annotations (TERMINATION_MESSAGE_ANNOTATION, EXIT_CODE_ANNOTATION): what
    the holdout gate's evaluator would have written. An exit code other than 0 ends the pod Failed."""
    text = stage.read_text()
    indent = " " * 6
    head = f"{indent}{{{{ $now := Now }}}}\n"
    exit_line = f"{indent}      exitCode: 0\n"
    phase = f"{indent}phase: Succeeded\n"
    ended = '{{ if eq $code "0" }}Succeeded{{ else }}Failed{{ end }}'
    for part in (head, exit_line, phase):
        if text.count(part) != 1:
            raise ClusterError(f"{stage}: not the pod-complete template expected:\n{part}")
    said = (
        f'{indent}{{{{ $message := "" }}}}{{{{ $code := "0" }}}}\n'
        f"{indent}{{{{ with .metadata.annotations }}}}"
        f'{{{{ with index . "{TERMINATION_MESSAGE_ANNOTATION}" }}}}{{{{ $message = . }}}}{{{{ end }}}}'
        f'{{{{ with index . "{EXIT_CODE_ANNOTATION}" }}}}{{{{ $code = . }}}}{{{{ end }}}}'
        "{{ end }}\n"
    )
    text = (
        text.replace(head, head + said)
        .replace(
            exit_line,
            f"{indent}      exitCode: {{{{ $code }}}}\n"
            f"{indent}      {{{{ if $message }}}}\n"
            f"{indent}      message: {{{{ $message | Quote }}}}\n"
            f"{indent}      {{{{ end }}}}\n",
        )
        .replace(phase, f"{indent}phase: {ended}\n")
    )
    complete = state_dir / "kwok-pod-complete.yaml"
    complete.write_text(text)
    return complete


def _with_ready_delay(stage: Path, text: str) -> str:
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
    return text.replace(anchor, anchor + delay, 1)


def _with_readiness_gates(stage: Path, text: str) -> str:
    indent = " " * 6  # the statusTemplate's lines, in its block scalar
    now = f"{indent}{{{{ $now := Now }}}}\n"
    ready = (
        f"{indent}- lastTransitionTime: {{{{ $now | Quote }}}}\n"
        f'{indent}  status: "True"\n'
        f"{indent}  type: Ready\n"
    )
    gates_true = (
        f"{indent}{{{{ range .spec.readinessGates }}}}\n"
        f"{indent}- lastTransitionTime: {{{{ $now | Quote }}}}\n"
        f'{indent}  status: "True"\n'
        f"{indent}  type: {{{{ .conditionType | Quote }}}}\n"
        f"{indent}{{{{ end }}}}\n"
    )
    for part in (now, ready, gates_true):
        if text.count(part) != 1:
            raise ClusterError(f"{stage}: not the pod-ready template expected (for readiness gates):\n{part}")
    return (
        text.replace(now, now + textwrap.indent(_GATES_READY, indent))
        .replace(
            ready,
            f"{indent}- lastTransitionTime: {{{{ $now | Quote }}}}\n"
            f"{indent}  status: {{{{ $ready | Quote }}}}\n"
            f'{indent}  {{{{ if ne $ready "True" }}}}\n'
            f"{indent}  reason: ReadinessGatesNotReady\n"
            f"{indent}  message: {{{{ $message | Quote }}}}\n"
            f"{indent}  {{{{ end }}}}\n"
            f"{indent}  type: Ready\n",
        )
        .replace(gates_true, "")
    )


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
