"""Why a version cannot start reaches the resource's status: the pods' termination messages
(kube/observe.py), the stall decision (planning/health.py), and spec.serving.dependencies /
dependencyCache as the pods get them (spec/serving.py, planning/workloads.py)."""

from __future__ import annotations

from typing import Any

import pytest
from builders import OWNER, spec, workload

from aliasroll.errors import InvalidSpec
from aliasroll.kube.observe import pod_failures
from aliasroll.planning.health import stall_message
from aliasroll.planning.state import ServedVersion
from aliasroll.planning.workloads import (
    DEPENDENCY_CACHE_PATH,
    DependencySettings,
    WorkloadDefaults,
    deployment,
)
from aliasroll.spec import Track

P = Track.PRODUCTION
MESSAGE = "cannot install nope==1.0 for models:/m/2 from http://mirror/simple (UV_INDEX_URL): ..."


def pod(name: str, version: str, *statuses: dict[str, Any], track: str = "production") -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "labels": {"aliasroll.io/track": track, "aliasroll.io/model-version": version},
        },
        "status": {"containerStatuses": list(statuses)},
    }


def exited(code: int, message: str = "") -> dict[str, Any]:
    return {"exitCode": code, "reason": "Error" if code else "Completed", "message": message}


@pytest.mark.parametrize(
    ("pods", "expected"),
    [
        pytest.param([pod("a", "2", {"state": {"running": {}}})], {}, id="running"),
        # A crash loop is one failure in every state of its cycle, said in the same words: exited,
        # waiting to be restarted, and running again but not ready yet.
        pytest.param(
            [
                pod(
                    "a",
                    "2",
                    {
                        "state": {"running": {}},
                        "ready": False,
                        "restartCount": 3,
                        "lastState": {"terminated": exited(1, MESSAGE)},
                    },
                )
            ],
            {(P, "2"): f"pod a exited with code 1: {MESSAGE}"},
            id="restarted-and-running-again-not-ready-yet-still-fails",
        ),
        pytest.param(
            [
                pod(
                    "a",
                    "2",
                    {
                        "state": {"running": {}},
                        "ready": True,
                        "restartCount": 1,
                        "lastState": {"terminated": exited(1, MESSAGE)},
                    },
                )
            ],
            {},
            id="restarted-and-ready-serves",
        ),
        pytest.param(
            [
                pod(
                    "a",
                    "2",
                    {
                        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                        "lastState": {"terminated": exited(0)},
                    },
                )
            ],
            {(P, "2"): "pod a exited with code 0: Completed"},
            id="crash-loop-of-a-server-that-exits-0",
        ),
        pytest.param(
            [pod("a", "2", {"state": {"terminated": exited(1, MESSAGE)}})],
            {(P, "2"): f"pod a exited with code 1: {MESSAGE}"},
            id="terminated-with-message",
        ),
        pytest.param(
            [
                pod(
                    "a",
                    "2",
                    {
                        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                        "lastState": {"terminated": exited(1, MESSAGE)},
                    },
                )
            ],
            {(P, "2"): f"pod a exited with code 1: {MESSAGE}"},
            id="crash-loop",
        ),
        pytest.param([pod("a", "2", {"state": {"terminated": exited(0)}})], {}, id="exited-0-after-a-drain"),
        pytest.param(
            [pod("a", "2", {"state": {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}})],
            {(P, "2"): "pod a cannot start: ImagePullBackOff: not found"},
            id="image-cannot-be-pulled",
        ),
        pytest.param(
            [pod("a", "2", {"state": {"waiting": {"reason": "ContainerCreating"}}})], {}, id="still-creating"
        ),
        pytest.param(
            [pod("a", "2", {"state": {"terminated": exited(1, MESSAGE)}}, track="elsewhere")],
            {},
            id="not-a-track-pod",
        ),
    ],
)
def test_pod_failures(pods: list[dict[str, Any]], expected: dict[tuple[Track, str], str]) -> None:
    assert pod_failures(pods) == expected


WANTED = ServedVersion(model="sentiment", version="2", run_id="run-2")


@pytest.mark.parametrize(
    ("observed", "expected"),
    [
        pytest.param(workload(P, "2", rolled_out=False), None, id="moving"),
        pytest.param(
            workload(P, "2", rolled_out=False, pod_failure="pod a exited with code 1: x"),
            "pod a exited with code 1: x",
            id="a-pod-of-the-new-version-fails",
        ),
        pytest.param(
            workload(P, "2", rolled_out=True, pod_failure="pod a exited with code 1: x"),
            None,
            id="in-place-version-restarting-is-not-a-stalled-roll",
        ),
        pytest.param(
            workload(P, "2", rolled_out=False, stalled="deadline", pod_failure="pod a exited with code 1: x"),
            "deadline; pod a exited with code 1: x",
            id="deadline-and-pod-failure",
        ),
    ],
)
def test_stall_message(observed: Any, expected: str | None) -> None:
    assert stall_message(observed, WANTED) == expected


def _container(
    serving: dict[str, Any], settings: DependencySettings | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    built = deployment(
        owner=OWNER,
        spec=spec(serving=serving),
        track=P,
        version=WANTED,
        replicas=1,
        defaults=WorkloadDefaults(dependencies=settings or DependencySettings()),
    )
    pod_spec = built["spec"]["template"]["spec"]
    return pod_spec["containers"][0], pod_spec


def test_default_installs_with_no_cache_and_reports_why_it_failed() -> None:
    container, pod_spec = _container({})
    names = [item["name"] for item in container["env"]]
    assert "ALIASROLL_DEPENDENCIES" not in names
    assert "ALIASROLL_DEPENDENCY_CACHE" not in names
    # Review 2026-12 finding 13: FallbackToLogsOnError copied what the model printed into status.
    assert container["terminationMessagePolicy"] == "File"
    assert [volume["name"] for volume in pod_spec["volumes"]] == ["scratch"]


def test_image_mode_and_cache_reach_the_pod() -> None:
    settings = DependencySettings(cache_claim="deps")
    container, _ = _container({"dependencies": "image", "dependencyCache": {}}, settings)
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["ALIASROLL_DEPENDENCIES"] == "image"
    assert "ALIASROLL_DEPENDENCY_CACHE" not in env, "nothing is installed: no cache"
    container, pod_spec = _container({"dependencyCache": {}}, settings)
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["ALIASROLL_DEPENDENCY_CACHE"] == DEPENDENCY_CACHE_PATH
    assert {"name": "dependency-cache", "mountPath": DEPENDENCY_CACHE_PATH} in container["volumeMounts"]
    assert {"name": "dependency-cache", "persistentVolumeClaim": {"claimName": "deps"}} in pod_spec["volumes"]


@pytest.mark.parametrize(
    ("serving", "message"),
    [
        pytest.param({"dependencies": "pip"}, "use install", id="unknown-mode"),
        pytest.param(
            {"dependencyCache": {"emptyDir": {}}}, "the operator's settings say where", id="other-source"
        ),
        pytest.param(
            {"env": [{"name": "ALIASROLL_DEPENDENCIES", "value": "image"}]}, "operator sets it", id="env"
        ),
    ],
)
def test_bad_dependency_settings_say_what_to_fix(serving: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidSpec, match=message):
        spec(serving=serving)
