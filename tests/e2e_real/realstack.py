"""What the real-pod serving tests stand on: RealStack (one per test, from the `stack` fixture in
conftest.py) and Load, tests/support/load.py run inside the node's network namespace.

The operator runs inside the real node's network namespace, as it would inside a cluster: the API
server and the MLflow server (on the host's loopback) are bridged in, so one tracking URI works for
the operator and for the pods. Requests go through the Service's ClusterIP from inside the
namespace; answers are told apart by their X-Model-Version header.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import mlflow
from examples.sentiment.register import register_version
from harness import Kube, ready_at, wait_for
from mlflow import MlflowClient

from localkube import LocalCluster, RealNode
from mlflowserver import MlflowServer
from support import load

UNLOADABLE = Path(__file__).parent / "models" / "unloadable.py"
NAME = "sentiment"  # the ModelDeployment, its Service and its Deployments' prefix


class Load:
    """tests/support/load.py in the node's namespace, for the length of a `with` block."""

    def __init__(self, node: RealNode, address: str, out: Path, *, rate: float, seconds: float) -> None:
        self.out = out
        self.rate = rate
        self.process = subprocess.Popen(
            node.nsenter_argv(*load.command(address, rate=rate, seconds=seconds, out=str(out))),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def __enter__(self) -> Load:
        return self

    def __exit__(self, *_: object) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()  # never left running, whatever the test makes of it
            self.process.wait(timeout=10)
            raise

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
    # The ClusterIPs kube-proxy has been seen to route: a new Service's rules trail its first ready
    # endpoints (a moment, longer on a loaded machine), and until then its ClusterIP refuses.
    routed: set[str] = field(default_factory=set, repr=False)

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

        found = wait_for(
            check,
            timeout=timeout,
            what=f"Ready at {production}" + (f" + canary {canary}" if canary else ""),
        )
        if self.address not in self.routed:
            wait_for(self._answer, timeout=60, what=f"the Service {self.address} answering")
            self.routed.add(self.address)
        return found

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
        out = json.loads(self.node.run(sys.executable, "-c", self._client).stdout)
        assert out["status"] == 200, out
        return json.loads(out["body"]), str(out["version"])

    def _answer(self) -> bool:
        """A request through the Service got an answer (a refused connection is not one)."""
        return self.node.run(sys.executable, "-c", self._client, check=False).returncode == 0

    @property
    def _client(self) -> str:
        return (
            "import http.client, json\n"
            f"c = http.client.HTTPConnection({self.address!r}, 80, timeout=10)\n"
            "body = json.dumps({'inputs': ['this is great', 'this is terrible']})\n"
            "c.request('POST', '/invocations', body=body, headers={'Content-Type': 'application/json'})\n"
            "r = c.getresponse()\n"
            "answer = {'status': r.status, 'version': r.getheader('X-Model-Version'),"
            " 'body': r.read().decode()}\n"
            "print(json.dumps(answer))\n"
        )

    def load(self, name: str, *, rate: float = 60, seconds: float = 600) -> Load:
        """Open-loop requests through the Service, each on a new connection; answers in tmp/name.jsonl."""
        return Load(self.node, self.address, self.tmp / f"{name}.jsonl", rate=rate, seconds=seconds)

    def load_at(self, address: str, name: str, *, rate: float = 60, seconds: float = 600) -> Load:
        """As `load`, through another Service (a second ModelDeployment's)."""
        return Load(self.node, address, self.tmp / f"{name}.jsonl", rate=rate, seconds=seconds)
