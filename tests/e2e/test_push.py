"""Push: a real `mlflow server` with webhooks enabled delivers alias moves to the operator, which reads
the model at once instead of at its next poll; forged, old, replayed and unknown-model deliveries are
refused or ignored with a log line and nothing else; a delivery signed by another registry wakes
nothing of this one, and a delivery id that is not a UUID is refused. The operator's /metrics shows
it all."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from examples.sentiment.register import register_version
from harness import (
    OTHER_REGISTRY,
    OTHER_WEBHOOK_SECRET,
    WEBHOOK_REGISTRY,
    WEBHOOK_SECRET,
    Deploy,
    Kube,
    available_at,
    deployment_version,
    model_deployment,
    ready_at,
    wait_for,
)
from mlflow import MlflowClient

from aliasroll.webhooks import DELIVERY_ID_HEADER, PATH, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from mlflowserver import MlflowServer, count_requests
from operatorprocess import OperatorProcess, Samples

POLL = "1h"  # the safety net: far longer than any wait below


def polled_hourly(name: str, model: str, tracking_uri: str) -> dict[str, Any]:
    return model_deployment(
        name, model, tracking_uri, registry={"trackingUri": tracking_uri, "pollInterval": POLL}
    )


def settled(count: Callable[[], int], *, quiet: float = 2.0, timeout: float = 30.0) -> int:
    """The count once it has not moved for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    last, since = count(), time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, "the count kept moving"
        time.sleep(0.2)
        if (now := count()) != last:
            last, since = now, time.monotonic()
    return last


def receiver_url(operator: OperatorProcess, registry: str = WEBHOOK_REGISTRY) -> str:
    """Where a registry posts: each has a path (and a secret) of its own."""
    return f"http://{operator.extra_env['ALIASROLL_WEBHOOK_LISTEN']}{PATH}/{registry}"


def scrape(operator: OperatorProcess) -> Samples:
    return operator.metrics()


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def webhook(registry: MlflowClient, operator: OperatorProcess) -> Iterator[str]:
    """The webhook as the README registers it; deleted after the test so other tests stay poll-only."""
    created = registry.create_webhook(
        name=f"aliasroll-{uuid.uuid4().hex[:8]}",
        url=receiver_url(operator),
        events=["model_version_alias.created", "model_version_alias.deleted"],
        secret=WEBHOOK_SECRET,
    )
    yield created.webhook_id
    registry.delete_webhook(created.webhook_id)


def post(
    operator: OperatorProcess, body: bytes, headers: dict[str, str], *, registry: str = WEBHOOK_REGISTRY
) -> tuple[int, str]:
    request = urllib.request.Request(
        receiver_url(operator, registry), data=body, headers={**headers, "Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, json.loads(answer.read())["outcome"]
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())["outcome"]


def signed(body: bytes, *, delivery_id: str, sent: float, secret: str = WEBHOOK_SECRET) -> dict[str, str]:
    timestamp = str(int(sent))
    return {
        DELIVERY_ID_HEADER: delivery_id,
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(secret, delivery_id, timestamp, body),
    }


def alias_event(model: str, version: str) -> bytes:
    return json.dumps(
        {
            "entity": "model_version_alias",
            "action": "created",
            "timestamp": "2026-01-01T00:00:00+00:00",
            "data": {"name": model, "alias": "production", "version": version},
        }
    ).encode()


def test_a_pushed_alias_move_reaches_the_pod_template_long_before_the_poll(
    kube: Kube,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    registry: MlflowClient,
    deploy: Deploy,
    webhook: str,
    namespace: str,
    model_name: str,
) -> None:
    v1 = register_version(mlflow_server.url, model_name, variant="v1", alias="production")
    before = scrape(operator)
    deploy(polled_hourly("pushed", model_name, mlflow_server.url), versions=None, ready=v1)
    wait_for(
        lambda: available_at(kube, namespace, "pushed-production", v1), timeout=60, what="available at v1"
    )
    v2 = register_version(mlflow_server.url, model_name, variant="v2")
    time.sleep(1.5)  # the server's webhook list (cached 1 s here, 60 s by default) now has ours

    moved = time.monotonic()
    registry.set_registered_model_alias(model_name, "production", v2)
    wait_for(
        lambda: deployment_version(kube, namespace, "pushed-production") == v2,
        timeout=10,
        interval=0.05,
        what="the pod template pinned to v2, pushed (the poll is 60 s away)",
    )
    took = time.monotonic() - moved
    assert took < 5, f"the push took {took:.1f} s"

    log = operator.log_path.read_text(errors="replace")
    assert f"model {model_name!r} (@production) changed; reading it again now" in log
    # The pass that pinned v2 ends (status, events) a moment after the template changed.
    after = wait_for(
        lambda: (
            (samples := scrape(operator))
            and value(samples, "aliasroll_alias_move_to_applied_seconds_count")
            > value(before, "aliasroll_alias_move_to_applied_seconds_count")
            and samples
        ),
        timeout=10,
        what="the move-to-applied latency observed",
    )
    assert value(after, "aliasroll_webhook_deliveries_total", outcome="accepted") > value(
        before, "aliasroll_webhook_deliveries_total", outcome="accepted"
    )
    assert value(after, "aliasroll_passes_total", result="ok") > value(
        before, "aliasroll_passes_total", result="ok"
    )
    calls = ("aliasroll_registry_calls_total", (("call", "model_aliases"), ("outcome", "ok")))
    assert after[calls] > before.get(calls, 0.0)
    assert value(after, "aliasroll_registry_call_duration_seconds_count", call="model_aliases") > 0
    assert value(after, "aliasroll_leader") == 1.0
    assert ("aliasroll_queue_depth", ()) in after


def test_forged_old_replayed_and_unknown_deliveries_change_nothing(
    kube: Kube,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    registry: MlflowClient,
    deploy: Deploy,
    namespace: str,
    model_name: str,
) -> None:
    v1 = register_version(mlflow_server.url, model_name, variant="v1", alias="production")
    # The rollout's passes write version tags and read each write back: done (Ready) before the move.
    deploy(polled_hourly("quiet", model_name, mlflow_server.url), versions=None, ready=v1)
    wait_for(
        lambda: available_at(kube, namespace, "quiet-production", v1), timeout=60, what="available at v1"
    )
    v2 = register_version(mlflow_server.url, model_name, variant="v2")
    # Moved with no webhook registered: only a delivery could bring the change before the poll.
    registry.set_registered_model_alias(model_name, "production", v2)  # (the client reads the model too)
    reads = f"registered-models/get?name={model_name}"
    reads_before = settled(lambda: count_requests(mlflow_server.log_path, reads))
    before = scrape(operator)
    body = alias_event(model_name, v2)
    now = time.time()

    ids = {what: str(uuid.uuid4()) for what in ("forged", "old", "unknown")}  # MLflow's are UUIDs
    forged = post(operator, body, signed(body, delivery_id=ids["forged"], sent=now, secret="guessed" * 5))
    old = post(operator, body, signed(body, delivery_id=ids["old"], sent=now - 3600))
    unknown_body = alias_event("nobody-follows-this", "1")
    unknown = post(operator, unknown_body, signed(unknown_body, delivery_id=ids["unknown"], sent=now))
    assert (forged, old, unknown) == ((401, "bad_signature"), (401, "stale"), (200, "unknown_model"))
    time.sleep(1.0)
    assert count_requests(mlflow_server.log_path, reads) == reads_before, "a refused delivery read the model"
    assert deployment_version(kube, namespace, "quiet-production") == v1

    # A genuine delivery reads the model once; its replay is dropped.
    genuine = signed(body, delivery_id=str(uuid.uuid4()), sent=now)
    assert post(operator, body, genuine) == (200, "accepted")
    wait_for(
        lambda: deployment_version(kube, namespace, "quiet-production") == v2,
        timeout=10,
        what="pinned to v2 by the genuine delivery",
    )
    # The passes of the rollout write version tags (each write is read back): wait until they are done.
    wait_for(lambda: ready_at(kube, namespace, "quiet", v2), timeout=60, what="Ready at v2")
    reads_after_genuine = settled(lambda: count_requests(mlflow_server.log_path, reads))
    assert post(operator, body, genuine) == (200, "duplicate")
    time.sleep(1.0)
    assert count_requests(mlflow_server.log_path, reads) == reads_after_genuine, "a replay read the model"

    log = operator.log_path.read_text(errors="replace")
    where = f"(registry {WEBHOOK_REGISTRY})"
    for line in (
        f"webhook {ids['forged']} {where} bad_signature: the signature does not match the webhook secret",
        f"webhook {ids['old']} {where} stale: sent 36",
        f"webhook {ids['unknown']} {where} unknown_model: no ModelDeployment follows model "
        f"'nobody-follows-this' on registry '{WEBHOOK_REGISTRY}'",
        f"webhook {genuine[DELIVERY_ID_HEADER]} {where} duplicate: this delivery id was already accepted",
    ):
        assert line in log, line
    after = scrape(operator)
    for outcome in ("bad_signature", "stale", "unknown_model", "duplicate", "accepted"):
        assert (
            value(after, "aliasroll_webhook_deliveries_total", outcome=outcome)
            == value(before, "aliasroll_webhook_deliveries_total", outcome=outcome) + 1
        ), outcome


def test_another_registrys_delivery_wakes_nothing_here_and_ids_are_uuids(
    kube: Kube,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    registry: MlflowClient,
    deploy: Deploy,
    namespace: str,
    model_name: str,
) -> None:
    """The model is followed on the session's registry (`e2e`). Another tenant's registry
    (`elsewhere`), holding only its own secret, cannot open e2e's path, and its own deliveries naming
    the model read nothing here: the model is not followed on its tracking URI. A delivery id that is
    not a UUID is refused before anything else."""
    v1 = register_version(mlflow_server.url, model_name, variant="v1", alias="production")
    deploy(polled_hourly("scoped", model_name, mlflow_server.url), versions=None, ready=v1)
    v2 = register_version(mlflow_server.url, model_name, variant="v2")
    registry.set_registered_model_alias(model_name, "production", v2)  # no webhook: only a push reads it
    reads = f"registered-models/get?name={model_name}"
    reads_before = settled(lambda: count_requests(mlflow_server.log_path, reads))
    before = scrape(operator)
    body = alias_event(model_name, v2)
    now = time.time()

    def other(delivery_id: str) -> dict[str, str]:
        return signed(body, delivery_id=delivery_id, sent=now, secret=OTHER_WEBHOOK_SECRET)

    at_ours = post(operator, body, other(str(uuid.uuid4())))
    at_theirs = post(operator, body, other(str(uuid.uuid4())), registry=OTHER_REGISTRY)
    not_a_uuid = post(operator, body, signed(body, delivery_id="a" * 4000, sent=now))
    nowhere = post(operator, body, signed(body, delivery_id=str(uuid.uuid4()), sent=now), registry="nowhere")
    assert (at_ours, at_theirs, not_a_uuid, nowhere) == (
        (401, "bad_signature"),
        (200, "unknown_model"),
        (400, "malformed"),
        (404, "unknown_registry"),
    )
    time.sleep(1.0)
    assert count_requests(mlflow_server.log_path, reads) == reads_before, "another registry read the model"
    assert deployment_version(kube, namespace, "scoped-production") == v1

    log = operator.log_path.read_text(errors="replace")
    assert f"no ModelDeployment follows model {model_name!r} on registry '{OTHER_REGISTRY}'" in log
    assert "a" * 100 not in log, "a malformed id is never logged"
    after = scrape(operator)
    for outcome in ("bad_signature", "unknown_model", "malformed", "unknown_registry"):
        assert value(after, "aliasroll_webhook_deliveries_total", outcome=outcome) == (
            value(before, "aliasroll_webhook_deliveries_total", outcome=outcome) + 1
        ), outcome

    # The same move, delivered by this registry, is read at once.
    assert post(operator, body, signed(body, delivery_id=str(uuid.uuid4()), sent=now)) == (200, "accepted")
    wait_for(
        lambda: deployment_version(kube, namespace, "scoped-production") == v2,
        timeout=10,
        what="pinned to v2 by e2e's own delivery",
    )
