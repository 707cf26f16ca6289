"""`make demo`: the whole story on this machine, as it happens, on real pods.

A local control plane whose one node is real (containerd, kubelet, kube-proxy and cluster DNS in a
network namespace of their own; root), a real MLflow server at mlflow.mlflow.svc.cluster.local:5000,
the operator installed as users install it (`kubectl apply -k manifests/`: its image's two pods,
electing a leader), and the seed's sentiment model served by pods of the serving image built from
serving-image/Dockerfile: register v1 and deploy it; move @production to v2 and back; put v3 on
@canary with 20% of requests; promote it. Each step prints what the cluster shows and asks the
model through its Service, from inside the node's namespace: the scores and the X-Model-Version of
the answers follow the aliases. Everything stays up afterwards; `make demo-down` (or
`python demo/demo.py down`) stops it.

DEMO_CLUSTER=current uses the cluster of the current kubeconfig instead (no real node of ours, and
the images may not be where that cluster pulls from: the operator runs on this machine with your
credentials, the pods run whatever image the operator's default names, and at the end the version
production runs is asked through a model server process started here, `python -m aliasroll.serving`,
as the image starts it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# The story is the cluster's; MLflow's own chatter (run links, INFO lines) would drown it.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
sys.path[:0] = [str(REPO / "localenv"), str(REPO)]

from localcluster import ClusterError, LocalCluster  # noqa: E402
from localkube import RealNode  # noqa: E402
from mlflowserver import MlflowServer  # noqa: E402
from operatorpods import MLFLOW_ALLOWED_HOSTS, InstalledOperator, host_service, real_node_only  # noqa: E402
from operatorprocess import OperatorProcess  # noqa: E402

STATE = REPO / ".work" / "demo"
NAMESPACE = "demo"
MODEL = "sentiment"
POLL = "2s"
#: Images the real node needs: the sandbox's pause, the operator and the model server.
NODE_IMAGES = ("pause", "operator", "serving")
#: Requests that measure the canary's share of answers.
SPLIT_REQUESTS = 200
STARTED = time.monotonic()
#: Where the operator's logs are, once known (printed when something times out).
LOGS_HINT = f"{STATE}/operator.log"


def say(message: str) -> None:
    print(f"\033[1m[{time.monotonic() - STARTED:6.1f}s]\033[0m {message}", flush=True)


def step(title: str) -> None:
    print(f"\n\033[1;36m== {title}\033[0m", flush=True)


class Kubectl:
    def __init__(self, binary: str, kubeconfig: Path | None) -> None:
        self.binary = binary
        self.kubeconfig = kubeconfig

    def __call__(self, *args: str, input: str | None = None, check: bool = True) -> str:
        cmd = [self.binary, *([f"--kubeconfig={self.kubeconfig}"] if self.kubeconfig else []), *args]
        result = subprocess.run(cmd, input=input, capture_output=True, text=True, check=False)
        if check and result.returncode != 0:
            raise SystemExit(f"kubectl {' '.join(args)} failed:\n{result.stderr}")
        return result.stdout

    def json(self, *args: str) -> dict[str, Any]:
        out = self(*args, "-o", "json", check=False)
        return json.loads(out) if out.strip() else {}

    def show(self, *args: str) -> None:
        print(self(*args, check=False).rstrip(), flush=True)


def wait(check: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}; see the operator's logs ({LOGS_HINT})")
        time.sleep(0.2)
    say(what)


def pinned(kubectl: Kubectl, track: str) -> str | None:
    deployment = kubectl.json("get", "deployment", f"{MODEL}-{track}", "-n", NAMESPACE)
    return (
        deployment.get("spec", {})
        .get("template", {})
        .get("metadata", {})
        .get("labels", {})
        .get("aliasroll.io/model-version")
    )


def ready(kubectl: Kubectl, production: str, canary: str | None = None) -> bool:
    resource = kubectl.json("get", "mdep", MODEL, "-n", NAMESPACE)
    status = resource.get("status", {})
    conditions = {c["type"]: c["status"] for c in status.get("conditions", [])}
    return (
        conditions.get("Ready") == "True"
        and status.get("production", {}).get("version") == production
        and status.get("canary", {}).get("version") == canary
    )


def table(kubectl: Kubectl) -> None:
    kubectl.show("get", "mdep,deployments,services", "-n", NAMESPACE)


def history(kubectl: Kubectl) -> None:
    status = kubectl.json("get", "mdep", MODEL, "-n", NAMESPACE).get("status", {})
    print(f"{'TRACK':<11} {'VERSION':<8} {'FROM':<21} {'TO':<21} REASON")
    for entry in status.get("history", []):
        print(
            f"{entry['track']:<11} {entry['version']:<8} {entry['from']:<21} "
            f"{entry.get('to', '(serving)'):<21} {entry.get('reason', '')}"
        )


# One process in the node's namespace asks `count` times, each on a new connection (so kube-proxy
# picks a pod per request, as it does for many clients), and prints one JSON line per answer.
ASK_SCRIPT = """
import http.client, json, sys
address, count = sys.argv[1], int(sys.argv[2])
body = json.dumps({"inputs": ["this is great", "this is terrible"]})
for _ in range(count):
    try:
        c = http.client.HTTPConnection(address, 80, timeout=10)
        c.request("POST", "/invocations", body=body, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        text = r.read().decode()
        scores = json.loads(text)["predictions"] if r.status == 200 else None
        print(json.dumps({"status": r.status, "version": r.getheader("X-Model-Version"), "scores": scores}))
    except (OSError, http.client.HTTPException, ValueError) as e:
        print(json.dumps({"status": 0, "version": None, "error": repr(e)}))
    finally:
        c.close()
"""


class Service:
    """The ModelDeployment's Service, asked from inside the real node's network namespace, where
    ClusterIPs work as they do from inside a cluster (kube-proxy's rules live there)."""

    def __init__(self, node: RealNode, address: str) -> None:
        self.node = node
        self.address = address

    def ask(self, count: int) -> list[dict[str, Any]]:
        result = self.node.run(sys.executable, "-c", ASK_SCRIPT, self.address, str(count), timeout=120)
        return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]

    def versions(self, count: int) -> Counter[str]:
        return Counter(
            str(a["version"]) if a["status"] == 200 else f"HTTP {a['status']}" for a in self.ask(count)
        )

    def show(self, expected: str) -> None:
        """Waits until every answer comes from ``expected`` for two seconds on end (pods of the old
        version may still be leaving the endpoints, and kube-proxy follows a moment later), then
        prints one answer's scores."""
        started = time.monotonic()
        clean_since: list[float] = []

        def settled() -> bool:
            if set(self.versions(20)) != {expected}:
                clean_since.clear()
                return False
            if not clean_since:
                clean_since.append(time.monotonic())
            return time.monotonic() - clean_since[0] >= 2.0

        wait(settled, f"every answer comes from version {expected} (2 s on end)")
        say(f"  (only version {expected} answers since {clean_since[0] - started:.1f} s after Ready)")
        answer = self.ask(1)[0]
        great, terrible = answer["scores"]
        say(
            f"POST http://{self.address}/invocations: 'this is great' {great:.3f}, "
            f"'this is terrible' {terrible:.3f}   X-Model-Version: {answer['version']}"
        )

    def split(self, count: int, *, versions_expected: set[str]) -> Counter[str]:
        """The share of each version over ``count`` requests, once every expected version answers:
        a pod that just became Ready joins kube-proxy's rules a moment later."""
        wait(
            lambda: set(self.versions(20)) >= versions_expected,
            f"version(s) {', '.join(sorted(versions_expected))} answer through the Service",
        )
        time.sleep(2)
        versions = self.versions(count)
        shares = ", ".join(f"version {v}: {n} ({100 * n / count:.1f}%)" for v, n in sorted(versions.items()))
        say(f"{count} requests through the Service: {shares}")
        return versions


def service_address(kubectl: Kubectl) -> str:
    service = kubectl.json("get", "service", MODEL, "-n", NAMESPACE)
    return str(service["spec"]["clusterIP"])


def start_cluster() -> LocalCluster:
    """The local control plane with the real node; a running one without it is restarted."""
    cluster = LocalCluster(REPO / ".work" / "cluster", real_node=True, node_images=NODE_IMAGES)
    if cluster.is_running() and cluster.has_real_node:
        say("the local control plane and its real node are already running")
        missing = [name for name in NODE_IMAGES if name not in cluster.node.images]
        if missing:
            cluster.node.load_images(missing)
        real_node_only(cluster)
        return cluster
    if cluster.is_running():
        say("the local control plane runs without a real node: restarting it with one")
        cluster.stop()
    try:
        RealNode.check_prerequisites(cluster.bin_dir)
    except ClusterError as e:
        raise SystemExit(
            f"make demo runs real pods on a real node: {e}\n"
            "(or DEMO_CLUSTER=current make demo to use the cluster of your kubeconfig)"
        ) from None
    say(
        "starting etcd, kube-apiserver, controller-manager, scheduler and a real node (containerd, "
        "kubelet, kube-proxy and CoreDNS in a network namespace); the first run builds them and the "
        "operator and serving images"
    )
    cluster.start()
    real_node_only(cluster)
    say(
        f"cluster up in {cluster.startup_seconds:.1f} s (images checked in {cluster.images_seconds} s "
        f"before that); real node {cluster.node.name} in network namespace {cluster.node.netns}"
    )
    return cluster


def install_operator(cluster: LocalCluster) -> InstalledOperator:
    """`kubectl apply -k manifests/`, as users install it: its image's pods on the real node."""
    operator = InstalledOperator(cluster)
    operator.install()
    leader = operator.leader()
    global LOGS_HINT
    LOGS_HINT = (
        f"kubectl --kubeconfig={cluster.kubeconfig} logs -n aliasroll-system "
        "-l app.kubernetes.io/component=operator --prefix"
    )
    say(f"operator pods {', '.join(operator.ready_pods())} running; {leader} holds the Lease")
    return operator


def start_operator_process() -> None:
    """On a cluster of your own: `python -m aliasroll` on this machine, with your kubeconfig."""
    kubeconfig = Path(os.environ.get("KUBECONFIG") or Path.home() / ".kube" / "config")
    pid_file = STATE / "operator.pid"
    stop_pid(pid_file)
    operator = OperatorProcess(kubeconfig=kubeconfig, log_path=STATE / "operator.log")
    operator.start(timeout=120)
    pid_file.write_text(str(operator.pid))


def start_model_server(kubectl: Kubectl, tracking_uri: str) -> int:
    """Runs `python -m aliasroll.serving` (the image's entry point) with the pod template's MODEL_URI."""
    import socket
    import urllib.request

    template = kubectl.json("get", "deployment", f"{MODEL}-production", "-n", NAMESPACE)["spec"]["template"]
    env = {item["name"]: item.get("value", "") for item in template["spec"]["containers"][0]["env"]}
    ports = []
    for _ in range(2):  # the serving port, and the admin port (/ready, /metrics)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    port, admin_port = ports
    pid_file = STATE / "model-server.pid"
    stop_pid(pid_file)
    scratch = STATE / f"scratch-{port}"
    scratch.mkdir(parents=True, exist_ok=True)
    log = open(STATE / "model-server.log", "ab")  # noqa: SIM115 - the server keeps it
    process = subprocess.Popen(
        [sys.executable, "-m", "aliasroll.serving"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={
            **os.environ,
            "MODEL_URI": env["MODEL_URI"],
            "MLFLOW_TRACKING_URI": tracking_uri,
            "PORT": str(port),
            "ADMIN_PORT": str(admin_port),
            "SCRATCH_DIR": str(scratch),
            "HOST": "127.0.0.1",
        },
    )
    pid_file.write_text(str(process.pid))
    say(f"MODEL_URI={env['MODEL_URI']} (pinned in the pod template)")

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/ready", timeout=1) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    wait(ready, "the model server is ready (loaded and warmed up)", timeout=60)
    for text in ("this is great", "this is terrible"):
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": [text]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            (score,) = json.loads(answer.read())["predictions"]
            say(f"{text!r}: {score:.3f}   (X-Model-Version: {answer.headers['X-Model-Version']})")
    return port


def stop_pid(pid_file: Path) -> None:
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    pid_file.unlink()


def up(use_current: bool) -> None:
    STATE.mkdir(parents=True, exist_ok=True)
    step("1. A Kubernetes control plane")
    cluster: LocalCluster | None = None
    if use_current:
        kubeconfig = os.environ.get("KUBECONFIG")
        say(f"using the cluster of the current kubeconfig ({kubeconfig or '~/.kube/config'})")
        binary = subprocess.run(
            [sys.executable, str(REPO / "localenv/localcluster.py"), "kubectl-path"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        kubectl = Kubectl(binary, None)
    else:
        cluster = start_cluster()
        kubectl = Kubectl(str(cluster.bin_dir / "kubectl"), cluster.kubeconfig)
        say(f"kubeconfig: {cluster.kubeconfig}")
    kubectl.show("get", "nodes")

    operator: InstalledOperator | None = None
    if cluster is not None:
        step("2. Install the CRD and the operator: kubectl apply -f crds/, kubectl apply -k manifests/")
        operator = install_operator(cluster)
        kubectl.show("get", "pods", "-n", "aliasroll-system", "-o", "wide")
    else:
        step("2. Install the CRD and the operator's RBAC; run the operator here, with your kubeconfig")
        kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        kubectl("wait", "--for=condition=Established", "crd/modeldeployments.aliasroll.io", "--timeout=60s")
        start_operator_process()
        say(f"operator running (log: {LOGS_HINT})")

    step("3. A real MLflow server; log and register the sentiment model, as MLflow's docs do")
    server = MlflowServer(STATE / "mlflow", port=_saved_port(), extra_env=MLFLOW_ALLOWED_HOSTS)
    if not _mlflow_healthy(server):
        server.start()
        (STATE / "mlflow.port").write_text(str(server.port))
        (STATE / "mlflow.pid").write_text(str(server.pid))
    server.keep_running_after_exit()
    say(f"MLflow at {server.url}")
    tracking_uri = server.url
    if cluster is not None:
        # As a cluster's own MLflow would be: a Service (here bridged to the server on this machine).
        tracking_uri = "http://" + host_service(
            cluster, cluster.node, namespace="mlflow", name="mlflow", port=5000, host_port=server.port
        )
        say(f"MLflow as the pods and the operator see it: {tracking_uri}")
    from examples.sentiment.register import register_version  # imports mlflow: after the servers are up
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=server.url, registry_uri=server.url)
    # A rerun starts the story over.
    kubectl("delete", "mdep", MODEL, "-n", NAMESPACE, "--ignore-not-found", "--wait=true", check=False)
    _fresh_model(client)
    v1 = register_version(server.url, MODEL, variant="v1", alias="production")
    say(f"registered {MODEL} version {v1}; @production -> {v1}")

    step("4. kubectl apply a ModelDeployment")
    kubectl("create", "namespace", NAMESPACE, check=False)
    manifest: dict[str, Any] = {
        "apiVersion": "aliasroll.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": MODEL, "namespace": NAMESPACE},
        "spec": {
            "model": {"name": MODEL, "alias": "production"},
            "registry": {"trackingUri": tracking_uri, "pollInterval": POLL},
            "replicas": 4,
        },
    }
    kubectl("apply", "-f", "-", input=json.dumps(manifest))
    wait(lambda: pinned(kubectl, "production") == v1, f"Deployment {MODEL}-production pinned to version {v1}")
    wait(lambda: ready(kubectl, v1), "Ready: version 1 serves production", timeout=300)
    table(kubectl)
    service: Service | None = None
    if cluster is not None:
        kubectl.show("get", "pods", "-n", NAMESPACE, "-o", "wide")
        service = Service(cluster.node, service_address(kubectl))
        service.show(v1)

    step("5. Register v2 and move @production: the operator rolls")
    v2 = register_version(server.url, MODEL, variant="v2")
    client.set_registered_model_alias(MODEL, "production", v2)
    say(f"@production -> {v2} (in MLflow; nothing edited in the cluster)")
    wait(lambda: pinned(kubectl, "production") == v2, f"pod template pinned to version {v2}")
    wait(lambda: ready(kubectl, v2), f"rollout complete: version {v2} serves production", timeout=300)
    table(kubectl)
    if service is not None:
        service.show(v2)

    step("6. Move it back: a rollback is an alias move too")
    client.set_registered_model_alias(MODEL, "production", v1)
    say(f"@production -> {v1}")
    wait(lambda: ready(kubectl, v1), f"rolled back: version {v1} serves production", timeout=300)
    if service is not None:
        service.show(v1)

    step("7. Register v3, point @canary at it, and give the canary 20% of requests")
    v3 = register_version(server.url, MODEL, variant="v3")
    client.set_registered_model_alias(MODEL, "canary", v3)
    manifest["spec"]["canary"] = {"alias": "canary", "weight": 20}
    manifest["spec"]["replicas"] = 5
    kubectl("apply", "-f", "-", input=json.dumps(manifest))
    wait(lambda: ready(kubectl, v1, v3), f"canary version {v3} runs beside version {v1}", timeout=300)
    table(kubectl)
    traffic = kubectl.json("get", "mdep", MODEL, "-n", NAMESPACE)["status"]["traffic"]
    say(f"traffic: {traffic['message']}")
    if service is not None:
        service.split(SPLIT_REQUESTS, versions_expected={v1, v3})

    step("8. Promote: move @production to the canary's version")
    client.set_registered_model_alias(MODEL, "production", v3)
    say(f"@production -> {v3}")
    wait(lambda: ready(kubectl, v3), f"version {v3} serves everything; the canary is gone", timeout=300)
    table(kubectl)
    if service is not None:
        service.show(v3)
        service.split(SPLIT_REQUESTS, versions_expected={v3})

    if service is not None:
        watched_canary(kubectl, client, server.url, manifest, service, production=v3)
        instant_rollback(kubectl, client, server.url, manifest, service)

    step("What happened, as the resource records it")
    history(kubectl)
    print()
    kubectl.show(
        "get",
        "events",
        "-n",
        NAMESPACE,
        "--field-selector",
        "involvedObject.kind=ModelDeployment",
        "--sort-by=.lastTimestamp",
        "-o",
        "custom-columns=TYPE:.type,REASON:.reason,MESSAGE:.message",
    )

    if service is None:
        step("10. Ask the model: the serving image's entry point, on the version production runs")
        model_port = start_model_server(kubectl, server.url)
        say(f"model server for the production version on http://127.0.0.1:{model_port}")
        ask = f"curl -s http://127.0.0.1:{model_port}/invocations"
    else:
        ask = f"nsenter --net={service.node.netns_path} curl -si http://{service.address}/invocations"

    pods = "".join(f"\n    {line}" for line in operator.log_locations()) if operator is not None else ""
    step("Still running; poke at it")
    kc = f"--kubeconfig={cluster.kubeconfig} " if cluster else ""
    print(f"""  kubectl {kc}get mdep -n {NAMESPACE} -w
  kubectl {kc}describe mdep {MODEL} -n {NAMESPACE}
  MLflow UI: {server.url}   (move an alias there, or:)
  MLFLOW_TRACKING_URI={server.url} {sys.executable} -c "from mlflow import MlflowClient; \\
    MlflowClient().set_registered_model_alias('{MODEL}', 'production', '{v2}')"
  {ask} -H 'Content-Type: application/json' \\
    -d '{{"inputs": ["this is great", "this is terrible"]}}'
  operator logs: {LOGS_HINT}{pods}
  kubectl binary: {kubectl.binary}
  tear down: make demo-down""")


def watched_canary(
    kubectl: Kubectl,
    client: Any,
    tracking_uri: str,
    manifest: dict[str, Any],
    service: Service,
    *,
    production: str,
) -> None:
    """Steps, the pods' own metrics judging the canary against production, and the operator moving
    @production in MLflow itself once every step passed."""
    step("9. A watched canary: steps, analysis of the pods' /metrics, automatic promotion in MLflow")
    manifest["spec"]["canary"] = {
        "alias": "canary",
        "steps": [{"weight": 25, "duration": "10s"}, {"weight": 50, "duration": "10s"}],
        "analysis": {"interval": "5s", "minRequests": 10, "errorRate": {"maxPercent": 1}},
        "promotion": "auto",
    }
    from examples.sentiment.register import register_version

    kubectl("apply", "-f", "-", input=json.dumps(manifest))
    v4 = register_version(tracking_uri, MODEL, variant="v4")
    client.set_registered_model_alias(MODEL, "canary", v4)
    say(f"@canary -> {v4}; steps 25% for 10s, 50% for 10s; every 5 s the canary's 5xx share is compared")
    stop = threading.Event()

    def traffic() -> None:  # the analysis needs requests to judge
        while not stop.is_set():
            service.ask(20)

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    seen: list[str] = []
    try:

        def promoted() -> bool:
            status = kubectl.json("get", "mdep", MODEL, "-n", NAMESPACE)["status"]
            canary = status.get("canary") or {}
            if canary.get("version") != v4:  # its pods are gone: how the run ended is lastCanary
                canary = status.get("lastCanary") or {}
            line = f"{canary.get('phase')} step {canary.get('step', '-')}: {canary.get('message', '')}"
            if canary.get("version") == v4 and (not seen or seen[-1] != line):
                seen.append(line)
                say(f"  {line[:150]}")
            return canary.get("phase") == "Succeeded" and ready(kubectl, v4)

        wait(promoted, f"version {v4} promoted by the operator and serving production", timeout=600)
    finally:
        stop.set()
        sender.join(timeout=30)
    aliases = client.get_registered_model(MODEL).aliases
    say(f"MLflow now says @production -> {aliases.get('production')} (moved by the operator)")
    # The records follow the rollout (written once it pauses): wait for the canary's outcome.
    wait(
        lambda: "aliasroll.io/canary.outcome" in client.get_model_version(MODEL, v4).tags,
        "the canary's outcome recorded on the version in MLflow",
        timeout=150,
    )
    tags = client.get_model_version(MODEL, v4).tags
    for key in sorted(tags):
        if key.startswith("aliasroll.io/canary."):
            say(f"  tag {key} = {tags[key][:110]}")
    service.show(v4)


def instant_rollback(
    kubectl: Kubectl, client: Any, tracking_uri: str, manifest: dict[str, Any], service: Service
) -> None:
    """spec.rollback: the version @production leaves stays warm, and moving @production back to it
    only changes routing: the on-call's rollback during an incident takes seconds."""
    from examples.sentiment.register import register_version

    step("10. An incident: roll back in seconds to a version kept warm (spec.rollback)")
    good = str(client.get_registered_model(MODEL).aliases["production"])
    manifest["spec"].pop("canary", None)
    manifest["spec"]["rollback"] = {"window": "30m"}
    kubectl("apply", "-f", "-", input=json.dumps(manifest))
    say("spec.rollback.window: 30m: a version that leaves @production keeps its pods, warm, for 30 minutes")

    def per_version() -> bool:
        names = {d["metadata"]["name"] for d in kubectl.json("get", "deploy", "-n", NAMESPACE)["items"]}
        return f"{MODEL}-v{good}" in names and f"{MODEL}-production" not in names and ready(kubectl, good)

    wait(per_version, f"one Deployment per version: {MODEL}-v{good} serves production", timeout=300)
    release = register_version(tracking_uri, MODEL, variant="v2")
    client.set_registered_model_alias(MODEL, "production", release)
    say(f"@production -> {release}: a new release (its pods start cold)")
    wait(lambda: ready(kubectl, release), f"version {release} serves production", timeout=300)
    service.show(release)
    kubectl.show("get", "deploy", "-n", NAMESPACE, "-L", "aliasroll.io/role")
    say(f"incident: version {release} misbehaves; on-call moves @production back to {good}")
    moved = time.monotonic()
    client.set_registered_model_alias(MODEL, "production", good)
    wait(lambda: set(service.versions(10)) == {good}, f"every answer from version {good}", timeout=120)
    say(f"every answer came from version {good} {time.monotonic() - moved:.1f} s after the alias move")
    found: list[str] = []

    def fast_rollback_event() -> bool:
        events = kubectl.json("get", "events", "-n", NAMESPACE, "--field-selector", "reason=FastRollback")
        found[:] = [str(event.get("message")) for event in events.get("items", [])]
        return any(f"version {good}" in message for message in found)

    wait(fast_rollback_event, "the FastRollback event", timeout=60)
    say(f"  event FastRollback: {found[-1]}")
    kubectl.show("get", "mdep", MODEL, "-n", NAMESPACE)


def down() -> None:
    stop_pid(STATE / "operator.pid")
    stop_pid(STATE / "model-server.pid")
    if (STATE / "mlflow.pid").exists():
        pid = (STATE / "mlflow.pid").read_text().strip()
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(pid), signal.SIGTERM)
    cluster = LocalCluster(REPO / ".work" / "cluster")
    if cluster.is_running():
        cluster.stop()
    print("demo stopped (operator, MLflow server, local control plane and its real node)")


def _saved_port() -> int | None:
    path = STATE / "mlflow.port"
    return int(path.read_text()) if path.exists() else None


def _mlflow_healthy(server: MlflowServer) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{server.url}/health", timeout=2) as answer:
            return bool(answer.status == 200)
    except (OSError, RuntimeError):
        return False


def _fresh_model(client: Any) -> None:
    """Versions start again from 1 on a rerun."""
    with contextlib.suppress(Exception):
        client.delete_registered_model(MODEL)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("action", nargs="?", choices=["up", "down"], default="up")
    args = parser.parse_args()
    if args.action == "down":
        down()
    else:
        up(use_current=os.environ.get("DEMO_CLUSTER") == "current")


if __name__ == "__main__":
    main()
