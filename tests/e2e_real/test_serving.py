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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import mlflow
import pytest
from examples.sentiment.register import register_version
from harness import Kube, condition, ready_at, wait_for
from mlflow import MlflowClient

from localkube import LocalCluster, RealNode
from mlflowserver import MlflowServer
from operatorprocess import OperatorProcess

REPO = Path(__file__).resolve().parents[2]
LOAD = REPO / "tests" / "support" / "load.py"
UNLOADABLE = Path(__file__).parent / "models" / "unloadable.py"
OPERATOR_NAMESPACE = "aliasroll-system"
NAME = "sentiment"  # the ModelDeployment, its Service and its Deployments' prefix


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


class Load:
    """tests/support/load.py in the node's namespace, for the length of a `with` block."""

    def __init__(self, node: RealNode, address: str, out: Path, *, rate: float, seconds: float) -> None:
        self.out = out
        self.rate = rate
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

    def finish(self) -> None:
        """Until every request the load was to send is answered (or has failed)."""
        self.process.wait(timeout=120)

    def running(self, seconds: float = 1.0) -> None:
        """Until a second's worth of answers is in: the load runs before what follows."""
        wanted = int(self.rate * seconds)
        wait_for(
            lambda: self.out.exists() and self.out.read_bytes().count(b"\n") >= wanted,
            timeout=30,
            what=f"the load's first {wanted} answers",
        )

    def answers(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.read_text().splitlines() if line.strip()]


@dataclass(frozen=True)
class RealStack:
    """What a serving test stands on: the cluster with the real node and the operator, the MLflow
    server, the serving image, and the test's own namespace, model name and scratch dir. Each test
    serves one ModelDeployment, NAME, of its model."""

    cluster: LocalCluster
    node: RealNode
    mlflow: MlflowServer
    registry: MlflowClient
    tracking_uri: str  # as the operator and the pods see the MLflow server
    image: str
    placement: dict[str, Any]
    namespace: str
    model: str
    tmp: Path

    @cached_property
    def kube(self) -> Kube:
        return Kube(self.cluster)

    def register(self, variant: str, *, alias: str | None = None) -> str:
        """A new version of the example model (examples/sentiment/register.py); its number."""
        return register_version(self.mlflow.url, self.model, variant=variant, alias=alias)

    def register_unloadable(self) -> str:
        """A new version whose load_context raises, as a model missing a dependency would."""
        mlflow.set_tracking_uri(self.mlflow.url)
        with mlflow.start_run():
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(UNLOADABLE),
                registered_model_name=self.model,
                pip_requirements=[f"mlflow-skinny=={mlflow.__version__}"],
            )
        return str(info.registered_model_version)

    def point(self, alias: str, version: str) -> None:
        self.registry.set_registered_model_alias(self.model, alias, version)

    def manifest(self, **spec: Any) -> dict[str, Any]:
        """The ModelDeployment of the model on the real node: 2 replicas unless `spec` says otherwise."""
        body: dict[str, Any] = {
            "model": {"name": self.model},
            "registry": {"trackingUri": self.tracking_uri, "pollInterval": "1s"},
            "replicas": 2,
            "serving": {"image": self.image, "podTemplate": {"spec": self.placement}},
            **spec,
        }
        return {
            "apiVersion": "aliasroll.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": NAME},
            "spec": body,
        }

    def apply(self, manifest: dict[str, Any]) -> None:
        self.kube.apply(manifest, namespace=self.namespace)

    def deploy(self, **spec: Any) -> dict[str, Any]:
        """Applies manifest(**spec) and returns it, to change and apply again."""
        manifest = self.manifest(**spec)
        self.apply(manifest)
        return manifest

    def resource(self) -> dict[str, Any] | None:
        return self.kube.get("mdep", NAME, self.namespace)

    def ready(
        self,
        production: str,
        canary: str | None = None,
        *,
        timeout: float = 240,
        also: Callable[[dict[str, Any]], bool] = lambda _: True,
    ) -> dict[str, Any]:
        """The ModelDeployment once Ready with these versions (and `also` holds of it)."""

        def check() -> dict[str, Any] | None:
            found = ready_at(self.kube, self.namespace, NAME, production, canary)
            return found if found is not None and also(found) else None

        return wait_for(
            check,
            timeout=timeout,
            what=f"Ready at {production}" + (f" + canary {canary}" if canary else ""),
        )

    def pods(self, selector: str | None = None) -> list[dict[str, Any]]:
        return self.kube.list("pods", self.namespace, selector)

    def old_pods_gone(self, timeout: float = 90) -> None:
        """Until no pod is stopping: the pods a transition replaced have run their preStop, drained
        and exited, so whatever they did to requests on the way out is in the load's answers."""
        wait_for(
            lambda: not [p for p in self.pods() if p["metadata"].get("deletionTimestamp")],
            timeout=timeout,
            what="the replaced pods gone",
        )

    @cached_property
    def address(self) -> str:
        """The Service's ClusterIP."""
        service = self.kube.get("service", NAME, self.namespace)
        assert service is not None
        return str(service["spec"]["clusterIP"])

    def ask(self) -> tuple[dict[str, Any], str]:
        """One request through the Service, from inside the node's namespace: (answer, X-Model-Version)."""
        client = (
            "import http.client, json\n"
            f"c = http.client.HTTPConnection({self.address!r}, 80, timeout=10)\n"
            "body = json.dumps({'inputs': ['this is great', 'this is terrible']})\n"
            "c.request('POST', '/invocations', body=body, headers={'Content-Type': 'application/json'})\n"
            "r = c.getresponse()\n"
            "answer = {'status': r.status, 'version': r.getheader('X-Model-Version'),"
            " 'body': r.read().decode()}\n"
            "print(json.dumps(answer))\n"
        )
        out = json.loads(self.node.run(sys.executable, "-c", client).stdout)
        assert out["status"] == 200, out
        return json.loads(out["body"]), str(out["version"])

    def load(self, name: str, *, rate: float = 60, seconds: float = 600) -> Load:
        """Open-loop requests through the Service, each on a new connection; answers in tmp/name.jsonl."""
        return Load(self.node, self.address, self.tmp / f"{name}.jsonl", rate=rate, seconds=seconds)


@pytest.fixture
def stack(
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
) -> Iterator[RealStack]:
    stack = RealStack(
        cluster=installed,
        node=node,
        mlflow=mlflow_server,
        registry=registry,
        tracking_uri=tracking_uri,
        image=serving_image,
        placement=placement,
        namespace=namespace,
        model=model_name,
        tmp=tmp_path,
    )
    yield stack
    stack.kube.close()


def test_the_seed_workflow_on_real_pods(stack: RealStack) -> None:
    """register.py's v1 at @production answers through the Service from a container that is not
    root, cannot write its root filesystem and has no ServiceAccount token; v2 answers once
    registered; @production moved back, v1 answers again."""
    v1 = stack.register("v1", alias="production")
    stack.deploy()
    stack.ready(v1)
    assert {pod["spec"]["nodeName"] for pod in stack.pods()} == {stack.node.name}

    answer, version = stack.ask()
    great, terrible = answer["predictions"]
    assert version == v1
    assert great > 0.9
    assert terrible < 0.1

    pod = stack.pods("aliasroll.io/track=production")[0]["metadata"]["name"]

    def inside(script: str) -> str:
        argv = ["exec", "-n", stack.namespace, pod, "--", "sh", "-c", script]
        return str(stack.cluster.kubectl(*argv).stdout.strip())

    assert inside("id -u") == "10001"
    refused = inside("touch /probe 2>&1 || echo refused")
    assert "Read-only file system" in refused
    assert refused.endswith("refused")
    assert (
        inside("test -e /var/run/secrets/kubernetes.io/serviceaccount/token && echo yes || echo no") == "no"
    )
    assert inside("touch /scratch/probe && echo ok") == "ok"

    v2 = stack.register("v2", alias="production")
    stack.ready(v2)
    wait_for(lambda: stack.ask()[1] == v2, timeout=30, what=f"answers from {v2}")
    stack.point("production", v1)
    stack.ready(v1)
    wait_for(lambda: stack.ask()[1] == v1, timeout=30, what=f"answers from {v1} again")


def test_the_split_measured_by_answers(stack: RealStack) -> None:
    """2,400 requests (200/s, each on a new connection) per split; the canary's share of the answers."""
    v1 = stack.register("v1", alias="production")
    v2 = stack.register("v2", alias="canary")
    manifest = stack.deploy(replicas=10, canary={"alias": "canary", "weight": 20})
    stack.ready(v1, v2, timeout=400)

    def canary_share(name: str) -> tuple[float, int]:
        with stack.load(name, rate=200, seconds=12) as load:
            load.finish()
        answers = load.answers()
        assert len(answers) >= 2000
        assert all(a["status"] == 200 for a in answers), Counter(a["status"] for a in answers)
        return 100 * sum(a["version"] == v2 for a in answers) / len(answers), len(answers)

    share, count = canary_share("split20")
    print(f"weight 20 over 10 replicas: canary share {share:.1f}% of {count} answers")
    assert 17 <= share <= 23, f"canary share {share:.1f}% of {count} answers (asked 20%)"

    # Weight 5 over 20 replicas: one canary pod of twenty.
    manifest["spec"].update(replicas=20, canary={"alias": "canary", "weight": 5})
    stack.apply(manifest)
    stack.ready(
        v1,
        v2,
        timeout=400,
        also=lambda found: (
            found["status"]["canary"]["availableReplicas"] == 1
            and found["status"]["production"]["availableReplicas"] == 19
        ),
    )
    share, count = canary_share("split5")
    print(f"weight 5 over 20 replicas: canary share {share:.1f}% of {count} answers")
    assert 3 <= share <= 7, f"canary share {share:.1f}% of {count} answers (asked 5%)"


@dataclass(frozen=True)
class Transition:
    """One change made under load, the versions serving once it is done, and the versions an answer
    may come from while it happens."""

    name: str
    act: Callable[[], object]
    production: str
    canary: str | None
    allowed: set[str]
    weight: int | None = None  # the canary weight the status must report, when only the weight moves

    def weight_in_status(self, found: dict[str, Any]) -> bool:
        asked = found["status"].get("traffic", {}).get("requestedCanaryWeight")
        return self.weight is None or asked == self.weight


def test_no_request_fails_through_any_transition(stack: RealStack) -> None:
    """A steady 60 requests/s through the Service while production rolls forward and back, a canary
    starts, changes weight, ends, and is promoted: every answer is a 200 from a version that was
    serving during that transition. Each load starts before its change and runs until the pods the
    change replaced are gone."""
    v1 = stack.register("v1", alias="production")
    v2 = stack.register("v2")
    v3 = stack.register("v1")
    manifest = stack.deploy(replicas=3)
    stack.ready(v1)

    def set_canary(weight: int) -> None:
        manifest["spec"]["canary"] = {"alias": "canary", "weight": weight}
        stack.apply(manifest)

    transitions = [
        Transition("roll forward", lambda: stack.point("production", v2), v2, None, {v1, v2}),
        Transition("roll back", lambda: stack.point("production", v1), v1, None, {v1, v2}),
        Transition("canary start", lambda: (stack.point("canary", v3), set_canary(30)), v1, v3, {v1, v3}),
        Transition("weight up", lambda: set_canary(70), v1, v3, {v1, v3}, weight=70),
        Transition("canary end", lambda: set_canary(0), v1, None, {v1, v3}),
        Transition("canary again", lambda: set_canary(30), v1, v3, {v1, v3}),
        Transition("promotion", lambda: stack.point("production", v3), v3, None, {v1, v3}),
    ]
    report: list[str] = []
    for step in transitions:
        started = time.monotonic()
        with stack.load(step.name.replace(" ", "-"), rate=60) as load:
            load.running()
            step.act()
            stack.ready(step.production, step.canary, also=step.weight_in_status)
            stack.old_pods_gone()
        answers = load.answers()
        failed = [a for a in answers if a["status"] != 200]
        versions = Counter(a.get("version") for a in answers)
        report.append(
            f"{step.name}: {len(answers)} answers in {time.monotonic() - started:.0f} s, "
            f"{len(failed)} failed, versions {dict(versions)}"
        )
        assert len(answers) >= 300, report[-1]
        assert not failed, f"{step.name}: {failed[:5]}\n" + "\n".join(report)
        assert set(versions) <= step.allowed, (
            f"{step.name}: answers from {set(versions) - step.allowed}\n" + "\n".join(report)
        )
    print("\n".join(report))


def test_a_version_that_cannot_load_never_takes_traffic(stack: RealStack) -> None:
    v1 = stack.register("v1", alias="production")
    stack.deploy(replicas=2)
    broken = stack.register_unloadable()  # while v1's pods start
    stack.ready(v1)

    def stalled() -> dict[str, Any] | None:
        found = stack.resource()
        return found if condition(found, "Ready") == ("False", "RolloutStalled") else None

    with stack.load("broken", rate=60) as load:
        load.running()
        stack.point("production", broken)
        resource = wait_for(stalled, timeout=180, what="Ready=False/RolloutStalled")
    answers = load.answers()
    assert len(answers) >= 300
    assert all(a["status"] == 200 and a["version"] == v1 for a in answers), Counter(
        (a["status"], a.get("version")) for a in answers
    )
    message = next(c["message"] for c in resource["status"]["conditions"] if c["type"] == "Ready")
    assert broken in message
    assert resource["status"]["production"]["version"] == broken, "the Deployment pins the new version"
