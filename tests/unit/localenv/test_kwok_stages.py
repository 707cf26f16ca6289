"""The kwok stages the local cluster runs: kwok's pod-ready stage delayed by the ready-delay annotation
and made to honour readiness gates, and a stage of our own that follows the gates once pods run (the
cluster's behaviour is tests/e2e/test_kwok_readiness_gates.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from localkube import kwok
from localkube.common import ClusterError

# The parts of kwok 0.8.0's kustomize/stage/pod/fast/pod-ready.yaml that are rewritten.
POD_READY = """\
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-ready
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.status.phase'
      operator: 'In'
      values:
      - 'Pending'
  next:
    statusTemplate: |
      {{ $now := Now }}

      conditions:
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: Initialized
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: Ready
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: ContainersReady
      {{ range .spec.readinessGates }}
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: {{ .conditionType | Quote }}
      {{ end }}
      phase: Running
"""


def bin_dir(tmp_path: Path, pod_ready: str = POD_READY) -> Path:
    for sub in kwok.KWOK_STAGE_DIRS:
        (tmp_path / "bin" / "kwok-stages" / sub).mkdir(parents=True)
    (tmp_path / "bin" / "kwok-stages" / "pod" / "fast" / "pod-ready.yaml").write_text(pod_ready)
    (tmp_path / "state").mkdir()
    return tmp_path / "bin"


def stages(tmp_path: Path) -> dict[str, dict[str, Any]]:
    files = kwok.stage_files(bin_dir(tmp_path), tmp_path / "state")
    assert all(f.parent == tmp_path / "state" for f in files), files
    loaded = [yaml.safe_load(f.read_text()) for f in files]
    return {stage["metadata"]["name"]: stage for stage in loaded}


def test_pod_ready_is_delayed_and_writes_no_gate_condition(tmp_path: Path) -> None:
    pod_ready = stages(tmp_path)["pod-ready"]
    assert pod_ready["spec"]["delay"]["durationFrom"]["jq"]["expression"] == (
        f'.metadata.annotations["{kwok.READY_DELAY_ANNOTATION}"]'
    )
    template = pod_ready["spec"]["next"]["statusTemplate"]
    assert ".conditionType | Quote" not in template  # kwok no longer marks the gates True itself
    assert "status: {{ $ready | Quote }}\n" in template
    assert "range .spec.readinessGates" in template  # $ready comes from them
    assert template.count('status: "True"') == 2  # Initialized, ContainersReady


def test_a_stage_of_its_own_follows_the_gates_of_running_pods(tmp_path: Path) -> None:
    gates = stages(tmp_path)["pod-readiness-gates"]
    keys = {
        e["jq"]["key"]: (e["jq"]["operator"], e["jq"].get("values"))
        for e in gates["spec"]["selector"]["matchExpressions"]
    }
    assert keys[".status.phase"] == ("In", ["Running"])
    assert keys[".spec.readinessGates[]?.conditionType"] == ("Exists", None)
    [disagree] = [key for key in keys if "!=" in key]
    assert keys[disagree] == ("In", ["true"])
    [step] = gates["spec"]["steps"]
    # A strategic merge of status: conditions merge by type, so only Ready is written and the
    # gates' conditions stay as their controller wrote them.
    assert {k: step["patch"][k] for k in ("subresource", "root", "type")} == {
        "subresource": "status",
        "root": "status",
        "type": "strategic",
    }
    template = step["patch"]["template"]
    assert template.count("- type:") == 1
    assert "- type: Ready\n" in template


def test_another_pod_ready_template_is_refused(tmp_path: Path) -> None:
    changed = POD_READY.replace(
        '        status: "True"\n        type: Ready\n', '        type: Ready\n        status: "True"\n'
    )
    assert changed != POD_READY
    with pytest.raises(ClusterError, match="pod-ready template"):
        kwok.stage_files(bin_dir(tmp_path, changed), tmp_path / "state")
