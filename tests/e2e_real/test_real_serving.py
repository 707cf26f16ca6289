"""Serving claims, measured on real pods of the serving image built from serving-image/Dockerfile
(see realstack.py for how): the seed's workflow, the canary split counted by answers, and a version
that cannot load. No failed request through transitions: test_transitions.py."""

from __future__ import annotations

import json
import sys
from collections import Counter
from typing import Any

from harness import condition, wait_for
from realstack import RealStack


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

    # The cluster's endpoints are on the pods' admin port, which the Service does not route to:
    # a client gets 404 for them, and no header but the version.
    def get(host: str, port: int, path: str) -> dict[str, Any]:
        script = (
            "import http.client, json, sys\n"
            "c = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=10)\n"
            "c.request('GET', sys.argv[3])\n"
            "r = c.getresponse()\n"
            "print(json.dumps({'status': r.status, 'headers': sorted(k.lower() for k, _ in r.getheaders()),"
            " 'body': r.read().decode(errors='replace')}))\n"
        )
        return dict(json.loads(stack.node.run(sys.executable, "-c", script, host, str(port), path).stdout))

    for path in ("/metrics", "/version", "/ready", "/live"):
        routed = get(stack.address, 80, path)
        assert routed["status"] == 404, (path, routed)
        assert "x-model-name" not in routed["headers"]
        assert "x-model-uri" not in routed["headers"]
    assert get(stack.address, 80, "/ping")["status"] == 200
    serving = stack.pods("aliasroll.io/track=production")[0]
    admin = get(serving["status"]["podIP"], 9090, "/metrics")
    assert admin["status"] == 200
    assert 'aliasroll_serving_requests_total{code="200"' in admin["body"]

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
