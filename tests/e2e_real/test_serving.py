"""Serving claims, measured on real pods of the serving image built from serving-image/Dockerfile.

The operator runs inside the real node's network namespace, as it would inside a cluster: the API
server and the MLflow server (on the host's loopback) are bridged in, so one tracking URI works for
the operator and for the pods. Requests go through the Service's ClusterIP from inside the
namespace; answers are told apart by their X-Model-Version header.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from examples.sentiment.register import register_version
from harness import Kube, condition, ready_at, wait_for
from mlflow import MlflowClient

from localkube import LocalCluster, RealNode
from mlflowserver import MlflowServer
from operatorprocess import OperatorProcess

REPO = Path(__file__).resolve().parents[2]
LOAD = REPO / "tests" / "support" / "load.py"
OPERATOR_NAMESPACE = "aliasroll-system"


@pytest.fixture(scope="session")
def installed(cluster: LocalCluster) -> LocalCluster:
    cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    wait_for(
        lambda: (
            "Established"
            in cluster.kubectl(
                "get", "crd", "modeldeployments.aliasroll.io", "-o", "jsonpath={.status.conditions[*].type}"
            ).stdout
        ),
        timeout=60,
        what="the CRD Established",
    )
    cluster.kubectl("apply", "-k", str(REPO / "manifests"))
    return cluster


@pytest.fixture(scope="session")
def serving_image(node: RealNode) -> str:
    return node.load_images(["serving"])["serving"]


@pytest.fixture(scope="session")
def tracking_uri(node: RealNode, mlflow_server: MlflowServer) -> str:
    """The MLflow server as the operator and the pods see it, from inside the node's namespace."""
    address, port = node.expose_host_port(mlflow_server.port)
    return f"http://{address}:{port}"


@pytest.fixture(scope="session")
def operator(
    installed: LocalCluster, node: RealNode, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    token = installed.mint_token(OPERATOR_NAMESPACE, "aliasroll", expiration_seconds=24 * 3600)
    workdir = tmp_path_factory.mktemp("operator")
    kubeconfig = installed.write_kubeconfig_for_token(workdir / "kubeconfig", token)
    # Inside the namespace the API server is reached through its bridge on 127.0.0.1:6443.
    text = kubeconfig.read_text().replace(installed.server, "https://127.0.0.1:6443")
    kubeconfig.write_text(text)
    process = OperatorProcess(
        kubeconfig=kubeconfig,
        log_path=REPO / ".work" / "e2e-real-operator.log",
        verbose=True,
        netns=node.netns,
        env={
            "ALIASROLL_REGISTRY_TIMEOUT": "2",
            "ALIASROLL_REGISTRY_MAX_BACKOFF": "2",
            "ALIASROLL_RETRY_MAX": "3",
            # A version that cannot load stalls within the test's patience.
            "ALIASROLL_PROGRESS_DEADLINE": "40",
        },
    )
    process.log_path.unlink(missing_ok=True)
    process.start(timeout=120)
    yield process
    process.stop()


def model_deployment(
    name: str, model: str, tracking_uri: str, image: str, placement: dict[str, Any], **spec: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": {"name": model},
        "registry": {"trackingUri": tracking_uri, "pollInterval": "1s"},
        "replicas": 2,
        "serving": {"image": image, "podTemplate": {"spec": placement}},
    }
    body.update(spec)
    return {
        "apiVersion": "aliasroll.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": body,
    }


def cluster_ip(kube: Kube, namespace: str, name: str) -> str:
    service = kube.get("service", name, namespace)
    assert service is not None
    return str(service["spec"]["clusterIP"])


def ask(node: RealNode, address: str) -> tuple[dict[str, Any], str]:
    """One request through the Service, from inside the node's namespace: (answer, X-Model-Version)."""
    client = (
        "import http.client, json\n"
        f"c = http.client.HTTPConnection({address!r}, 80, timeout=10)\n"
        "body = json.dumps({'inputs': ['this is great', 'this is terrible']})\n"
        "c.request('POST', '/invocations', body=body, headers={'Content-Type': 'application/json'})\n"
        "r = c.getresponse()\n"
        "answer = {'status': r.status, 'version': r.getheader('X-Model-Version'),"
        " 'body': r.read().decode()}\n"
        "print(json.dumps(answer))\n"
    )
    out = json.loads(node.run(sys.executable, "-c", client).stdout)
    assert out["status"] == 200, out
    return json.loads(out["body"]), str(out["version"])


class Load:
    """tests/support/load.py in the node's namespace, for the length of a `with` block."""

    def __init__(
        self, node: RealNode, address: str, out: Path, *, rate: float = 60, seconds: float = 600
    ) -> None:
        self.out = out
        self.process = subprocess.Popen(
            node.nsenter_argv(
                sys.executable,
                str(LOAD),
                f"--url=http://{address}/invocations",
                f"--rate={rate}",
                f"--seconds={seconds}",
                f"--out={out}",
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def __enter__(self) -> Load:
        return self

    def __exit__(self, *_: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)

    def answers(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.read_text().splitlines() if line.strip()]


def test_the_seed_workflow_on_real_pods(
    installed: LocalCluster,
    node: RealNode,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    registry: MlflowClient,
    tracking_uri: str,
    serving_image: str,
    placement: dict[str, Any],
    namespace: str,
    model_name: str,
) -> None:
    kube = Kube(installed)
    v1 = register_version(mlflow_server.url, model_name, variant="v1", alias="production")
    kube.apply(
        model_deployment("sentiment", model_name, tracking_uri, serving_image, placement), namespace=namespace
    )
    wait_for(
        lambda: ready_at(kube, namespace, "sentiment", v1), timeout=240, what=f"Ready at {v1} on real pods"
    )
    pods = json.loads(installed.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
    assert {pod["spec"]["nodeName"] for pod in pods} == {node.name}

    address = cluster_ip(kube, namespace, "sentiment")
    answer, version = ask(node, address)
    great, terrible = answer["predictions"]
    assert version == v1
    assert great > 0.9
    assert terrible < 0.1

    v2 = register_version(mlflow_server.url, model_name, variant="v2", alias="production")
    wait_for(lambda: ready_at(kube, namespace, "sentiment", v2), timeout=240, what=f"Ready at {v2}")
    wait_for(lambda: ask(node, address)[1] == v2, timeout=30, what=f"answers from {v2}")
    registry.set_registered_model_alias(model_name, "production", v1)
    wait_for(lambda: ready_at(kube, namespace, "sentiment", v1), timeout=240, what=f"rolled back to {v1}")
    wait_for(lambda: ask(node, address)[1] == v1, timeout=30, what=f"answers from {v1} again")


def test_the_split_measured_by_answers(
    installed: LocalCluster,
    node: RealNode,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    registry: MlflowClient,
    tracking_uri: str,
    serving_image: str,
    placement: dict[str, Any],
    namespace: str,
    model_name: str,
    tmp_path: Path,
) -> None:
    kube = Kube(installed)
    v1 = register_version(mlflow_server.url, model_name, variant="v1", alias="production")
    v2 = register_version(mlflow_server.url, model_name, variant="v2", alias="canary")
    manifest = model_deployment(
        "sentiment",
        model_name,
        tracking_uri,
        serving_image,
        placement,
        replicas=10,
        canary={"alias": "canary", "weight": 20},
    )
    kube.apply(manifest, namespace=namespace)
    wait_for(
        lambda: ready_at(kube, namespace, "sentiment", v1, v2), timeout=400, what="Ready 8 + 2 real pods"
    )
    address = cluster_ip(kube, namespace, "sentiment")
    with Load(node, address, tmp_path / "split20.jsonl", rate=100, seconds=24) as load:
        load.process.wait(timeout=120)
    answers = load.answers()
    assert len(answers) >= 2000
    assert all(a["status"] == 200 for a in answers), Counter(a["status"] for a in answers)
    share = 100 * sum(a["version"] == v2 for a in answers) / len(answers)
    print(f"weight 20 over 10 replicas: canary share {share:.1f}% of {len(answers)} answers")
    assert 17 <= share <= 23, f"canary share {share:.1f}% of {len(answers)} answers (asked 20%)"

    # Weight 5 over 20 replicas: one canary pod of twenty.
    manifest["spec"]["replicas"] = 20
    manifest["spec"]["canary"]["weight"] = 5
    kube.apply(manifest, namespace=namespace)
    wait_for(
        lambda: (
            (found := ready_at(kube, namespace, "sentiment", v1, v2))
            and found["status"]["canary"]["availableReplicas"] == 1
            and found["status"]["production"]["availableReplicas"] == 19
        ),
        timeout=400,
        what="Ready 19 + 1 real pods",
    )
    with Load(node, address, tmp_path / "split5.jsonl", rate=100, seconds=24) as load:
        load.process.wait(timeout=120)
    answers = load.answers()
    assert len(answers) >= 2000
    assert all(a["status"] == 200 for a in answers), Counter(a["status"] for a in answers)
    share = 100 * sum(a["version"] == v2 for a in answers) / len(answers)
    print(f"weight 5 over 20 replicas: canary share {share:.1f}% of {len(answers)} answers")
    assert 3 <= share <= 7, f"canary share {share:.1f}% of {len(answers)} answers (asked 5%)"


def test_no_request_fails_through_any_transition(
    installed: LocalCluster,
    node: RealNode,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    registry: MlflowClient,
    tracking_uri: str,
    serving_image: str,
    placement: dict[str, Any],
    namespace: str,
    model_name: str,
    tmp_path: Path,
) -> None:
    """A steady 60 requests/s through the Service while production rolls forward and back, a canary
    starts, changes weight, ends, and is promoted: every answer is a 200 from a version that was
    serving during that transition."""
    kube = Kube(installed)
    v1 = register_version(mlflow_server.url, model_name, variant="v1", alias="production")
    v2 = register_version(mlflow_server.url, model_name, variant="v2")
    v3 = register_version(mlflow_server.url, model_name, variant="v1")
    manifest = model_deployment("sentiment", model_name, tracking_uri, serving_image, placement, replicas=3)
    kube.apply(manifest, namespace=namespace)
    wait_for(lambda: ready_at(kube, namespace, "sentiment", v1), timeout=240, what=f"Ready at {v1}")
    address = cluster_ip(kube, namespace, "sentiment")

    def set_canary(weight: int) -> None:
        manifest["spec"]["canary"] = {"alias": "canary", "weight": weight}
        kube.apply(manifest, namespace=namespace)

    def canary_weight(expected: int) -> bool:
        found = kube.get("mdep", "sentiment", namespace) or {}
        return bool(found.get("status", {}).get("traffic", {}).get("requestedCanaryWeight") == expected)

    transitions: list[tuple[str, Any, tuple[str, str | None], set[str]]] = [
        (
            "roll forward",
            lambda: registry.set_registered_model_alias(model_name, "production", v2),
            (v2, None),
            {v1, v2},
        ),
        (
            "roll back",
            lambda: registry.set_registered_model_alias(model_name, "production", v1),
            (v1, None),
            {v1, v2},
        ),
        (
            "canary start",
            lambda: (registry.set_registered_model_alias(model_name, "canary", v3), set_canary(30)),
            (v1, v3),
            {v1, v3},
        ),
        ("weight up", lambda: set_canary(70), (v1, v3), {v1, v3}),
        ("canary end", lambda: set_canary(0), (v1, None), {v1, v3}),
        ("canary again", lambda: set_canary(30), (v1, v3), {v1, v3}),
        (
            "promotion",
            lambda: registry.set_registered_model_alias(model_name, "production", v3),
            (v3, None),
            {v1, v3},
        ),
    ]
    report: list[str] = []
    for name, act, (production, canary), allowed in transitions:
        with Load(node, address, tmp_path / f"{name.replace(' ', '-')}.jsonl", rate=60) as load:
            time.sleep(2)  # the load runs before the change, through it, and after it
            act()
            if name == "weight up":
                wait_for(lambda: canary_weight(70), timeout=30, what="weight 70 asked")
            wait_for(
                lambda p=production, c=canary: ready_at(kube, namespace, "sentiment", p, c),
                timeout=240,
                what=f"{name}: Ready at {production}/{canary}",
            )
            time.sleep(8)  # pods of the old version are still stopping (preStop, drain)
        answers = load.answers()
        failed = [a for a in answers if a["status"] != 200]
        versions = Counter(a.get("version") for a in answers)
        report.append(f"{name}: {len(answers)} answers, {len(failed)} failed, versions {dict(versions)}")
        assert len(answers) >= 300, report[-1]
        assert not failed, f"{name}: {failed[:5]}\n" + "\n".join(report)
        assert set(versions) <= allowed, f"{name}: answers from {set(versions) - allowed}\n" + "\n".join(
            report
        )
    print("\n".join(report))


def test_a_version_that_cannot_load_never_takes_traffic(
    installed: LocalCluster,
    node: RealNode,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    registry: MlflowClient,
    tracking_uri: str,
    serving_image: str,
    placement: dict[str, Any],
    namespace: str,
    model_name: str,
    tmp_path: Path,
) -> None:
    import mlflow

    kube = Kube(installed)
    v1 = register_version(mlflow_server.url, model_name, variant="v1", alias="production")
    kube.apply(
        model_deployment("sentiment", model_name, tracking_uri, serving_image, placement, replicas=2),
        namespace=namespace,
    )
    wait_for(lambda: ready_at(kube, namespace, "sentiment", v1), timeout=240, what=f"Ready at {v1}")
    address = cluster_ip(kube, namespace, "sentiment")

    mlflow.set_tracking_uri(mlflow_server.url)
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(Path(__file__).parent / "models" / "unloadable.py"),
            registered_model_name=model_name,
            pip_requirements=[f"mlflow-skinny=={mlflow.__version__}"],
        )
    broken = str(info.registered_model_version)
    with Load(node, address, tmp_path / "broken.jsonl", rate=60) as load:
        registry.set_registered_model_alias(model_name, "production", broken)

        def stalled() -> dict[str, Any] | None:
            found = kube.get("mdep", "sentiment", namespace)
            return found if condition(found, "Ready") == ("False", "RolloutStalled") else None

        resource = wait_for(stalled, timeout=180, what="Ready=False/RolloutStalled")
    answers = load.answers()
    assert len(answers) >= 300
    assert all(a["status"] == 200 and a["version"] == v1 for a in answers), Counter(
        (a["status"], a.get("version")) for a in answers
    )
    message = next(c["message"] for c in resource["status"]["conditions"] if c["type"] == "Ready")
    assert broken in message
    assert resource["status"]["production"]["version"] == broken, "the Deployment pins the new version"


def test_inside_the_serving_container(
    installed: LocalCluster,
    node: RealNode,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    tracking_uri: str,
    serving_image: str,
    placement: dict[str, Any],
    namespace: str,
    model_name: str,
) -> None:
    """Not root, a read-only root filesystem, no ServiceAccount token unless asked, scratch writable."""
    kube = Kube(installed)
    v1 = register_version(mlflow_server.url, model_name, variant="v1", alias="production")
    kube.apply(
        model_deployment("sentiment", model_name, tracking_uri, serving_image, placement, replicas=1),
        namespace=namespace,
    )
    wait_for(lambda: ready_at(kube, namespace, "sentiment", v1), timeout=240, what=f"Ready at {v1}")
    pod = json.loads(
        installed.kubectl(
            "get", "pods", "-n", namespace, "-l", "aliasroll.io/track=production", "-o", "json"
        ).stdout
    )["items"][0]["metadata"]["name"]

    def inside(script: str) -> str:
        return str(installed.kubectl("exec", "-n", namespace, pod, "--", "sh", "-c", script).stdout.strip())

    assert inside("id -u") == "10001"
    assert inside("touch /probe 2>&1 || echo refused").endswith("refused")
    assert "Read-only file system" in inside("touch /probe 2>&1 || true")
    assert (
        inside("test -e /var/run/secrets/kubernetes.io/serviceaccount/token && echo yes || echo no") == "no"
    )
    assert inside("touch /scratch/probe && echo ok") == "ok"
