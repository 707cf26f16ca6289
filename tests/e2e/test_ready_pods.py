"""Capacity through every transition, watched pod by pod on the real control plane.

Fake pods become ready 800 ms after they start (the local cluster's ready-delay annotation), so a
track that shrinks before the other's pods are up shows as a dip. A watch on the serving pods sees
every readiness change the API server records (no sampling gaps):
after each event the number of ready, non-terminating pods across both tracks must stay at or
above what the user asked for (the lower of the old and new totals while replicas change). The
transitions: canary start, weight up, weight down, canary end, a new canary promoted, a rollback,
replicas down and up.
"""

from __future__ import annotations

import json
import subprocess
import threading
from typing import Any

import pytest
from harness import Kube, available_at, model_deployment, ready_at, registered, wait_for
from mlflow import MlflowClient

from localcluster import LocalCluster
from mlflowserver import MlflowServer
from operatorprocess import OperatorProcess


class ReadyPodWatch:
    """`kubectl get pods --watch`: tracks which pods are ready and not terminating, and the lowest
    count seen while a floor is set."""

    def __init__(self, cluster: LocalCluster, namespace: str) -> None:
        command = [
            str(cluster.bin_dir / "kubectl"),
            f"--kubeconfig={cluster.kubeconfig}",
            "get",
            "pods",
            "-n",
            namespace,
            "-l",
            "aliasroll.io/modeldeployment=sentiment",
            "--watch",
            "--output-watch-events",
            "-o",
            "json",
        ]
        self._process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        self._ready: dict[str, bool] = {}
        self._lock = threading.Lock()
        self.floor = 0
        self.dips: list[str] = []
        self.events = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        decoder = json.JSONDecoder()
        buffer = ""
        assert self._process.stdout is not None
        for line in self._process.stdout:
            buffer += line
            while buffer.strip():
                try:
                    event, end = decoder.raw_decode(buffer.lstrip())
                except json.JSONDecodeError:
                    break  # the object is not complete yet
                buffer = buffer.lstrip()[end:]
                self._record(event)

    def _record(self, event: dict[str, Any]) -> None:
        pod = event["object"]
        meta = pod["metadata"]
        ready = (
            event["type"] != "DELETED"
            and not meta.get("deletionTimestamp")
            and any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in pod.get("status", {}).get("conditions", [])
            )
        )
        with self._lock:
            self._ready[meta["uid"]] = ready
            self.events += 1
            count = self.ready_count()
            if count < self.floor:
                self.dips.append(
                    f"{count} ready pods < {self.floor} (event {self.events}: {event['type']} {meta['name']})"
                )

    def ready_count(self) -> int:
        return sum(self._ready.values())

    def set_floor(self, floor: int) -> None:
        with self._lock:
            self.floor = floor

    def stop(self) -> None:
        self._process.terminate()
        self._process.wait(timeout=10)
        self._reader.join(timeout=10)
        if self._process.stdout is not None:
            self._process.stdout.close()


@pytest.mark.parametrize("router", ["replicas", "gatewayAPI"])
def test_ready_pods_never_dip_through_any_transition(
    kube: Kube,
    cluster: LocalCluster,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    registry: MlflowClient,
    namespace: str,
    model_name: str,
    router: str,
) -> None:
    registered(registry, model_name, 4, production="1")
    manifest = model_deployment(
        "sentiment", model_name, mlflow_server.url, replicas=5, traffic={"router": router}
    )
    watch = ReadyPodWatch(cluster, namespace)
    try:
        kube.apply(manifest, namespace=namespace)
        wait_for(lambda: ready_at(kube, namespace, "sentiment", "1"), timeout=60, what="Ready at 1")
        wait_for(lambda: watch.ready_count() >= 5, timeout=30, what="5 ready pods seen by the watch")
        watch.set_floor(5)

        def settle(production: str, canary: str | None, what: str) -> None:
            wait_for(
                lambda: ready_at(kube, namespace, "sentiment", production, canary), timeout=90, what=what
            )

        def set_canary(weight: int) -> None:
            manifest["spec"]["canary"] = {"alias": "canary", "weight": weight}
            kube.apply(manifest, namespace=namespace)

        registry.set_registered_model_alias(model_name, "canary", "2")
        set_canary(40)
        settle("1", "2", "canary 2 at 40%")
        set_canary(80)
        settle("1", "2", "canary at 80%")
        wait_for(lambda: _weight(kube, namespace) == 80, timeout=30, what="80% in status")
        set_canary(20)
        settle("1", "2", "canary down to 20%")
        wait_for(lambda: _weight(kube, namespace) == 20, timeout=30, what="20% in status")
        set_canary(0)  # the canary ends
        settle("1", None, "canary ended")
        assert kube.get("deployment", "sentiment-canary", namespace) is None

        registry.set_registered_model_alias(model_name, "canary", "3")
        set_canary(40)
        settle("1", "3", "canary 3")
        registry.set_registered_model_alias(model_name, "production", "3")  # promotion
        settle("3", None, "promoted to 3")
        registry.delete_registered_model_alias(model_name, "canary")  # else a rollback brings it back
        registry.set_registered_model_alias(model_name, "production", "1")  # rollback
        wait_for(
            lambda: available_at(kube, namespace, "sentiment-production", "1"), timeout=60, what="back at 1"
        )
        settle("1", None, "rolled back to 1")

        manifest["spec"]["replicas"] = 3
        watch.set_floor(3)
        kube.apply(manifest, namespace=namespace)
        settle("1", None, "scaled down to 3")
        manifest["spec"]["replicas"] = 6
        kube.apply(manifest, namespace=namespace)
        settle("1", None, "scaled up to 6")
        wait_for(lambda: watch.ready_count() >= 6, timeout=30, what="6 ready pods seen by the watch")
    finally:
        watch.stop()
    assert watch.events > 20, "the watch saw the pods come and go"
    assert not watch.dips, "ready pods dropped below what was asked:\n" + "\n".join(watch.dips[:10])


def _weight(kube: Kube, namespace: str) -> int | None:
    resource = kube.get("mdep", "sentiment", namespace) or {}
    weight = resource.get("status", {}).get("traffic", {}).get("canaryWeight")
    return int(weight) if weight is not None else None
