"""Which tenant URLs the operator calls (aliasroll.egress): the default refuses loopback, link-local and
metadata addresses and the API server, and keeps in-cluster and public registries reachable; an
allow-list opens what it names, and a refused range only when named narrowly."""

from __future__ import annotations

import pytest

from aliasroll.egress import ALLOWED_ENV, Destinations

POD_ENV = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "HOST_IP": "192.168.49.2", "POD_IP": "10.244.1.7"}
DEFAULT = Destinations.from_env(POD_ENV)


@pytest.mark.parametrize(
    ("url", "refused_because"),
    [
        # Where MLflow usually runs: in the cluster (a Service name, a ClusterIP, a pod IP), or outside.
        ("http://mlflow.mlflow.svc.cluster.local:5000", None),
        ("http://mlflow.mlflow:5000", None),
        ("http://10.0.3.7:5000", None),
        ("http://172.20.0.10:5000/mlflow", None),
        ("http://192.168.1.20:5000", None),
        ("https://adb-123.azuredatabricks.net", None),
        ("https://[2001:db8::10]:5000", None),
        ("http://[fd12:3456::10]:5000", None),
        # The operator's own host and its neighbours in the pod.
        ("http://127.0.0.1:5000", "a loopback address"),
        ("http://127.3.4.5:5000", "a loopback address"),
        ("http://localhost:5000", "a loopback address"),
        ("http://mlflow.localhost:5000", "a loopback address"),
        ("http://[::1]:5000", "a loopback address"),
        ("http://[::ffff:127.0.0.1]:5000", "a loopback address"),
        ("http://0.0.0.0:5000", "an address of this host"),
        ("http://[::]:5000", "an address of this host"),
        # Instance metadata (credentials of the node's cloud identity).
        ("http://169.254.169.254/latest/meta-data/", "a link-local address"),
        ("http://[fe80::1%25eth0]:80", "a link-local address"),
        ("http://metadata.google.internal/computeMetadata/v1/", "a cloud metadata address"),
        ("http://100.100.100.200/latest/meta-data", "a cloud metadata address"),
        ("http://[fd00:ec2::254]/latest", "a cloud metadata address"),
        # The API server, by Service address and by name; the node; the operator's own pod.
        ("https://10.96.0.1:443", "the Kubernetes API server"),
        ("https://kubernetes.default.svc", "the Kubernetes API server"),
        ("https://kubernetes.default.svc.cluster.local", "the Kubernetes API server"),
        ("https://kubernetes:443", "the Kubernetes API server"),
        ("http://192.168.49.2:10250", "an address of the operator's node"),
        ("http://10.244.1.7:8081", "an address of the operator's own pod"),
        ("http://224.0.0.1:5000", "a multicast or broadcast address"),
        # Not URLs the operator calls at all.
        ("ftp://mlflow:21", "is not an http:// or https:// URL"),
        ("http://:5000", "is not an http:// or https:// URL"),
        ("http://mlflow:notaport", "is not a URL"),
    ],
)
def test_the_default_allows_the_cluster_and_refuses_the_operators_surroundings(
    url: str, refused_because: str | None
) -> None:
    reason = DEFAULT.check(url)
    if refused_because is None:
        assert reason is None
    else:
        assert reason is not None
        assert refused_because in reason


def test_a_refusal_says_how_to_open_it() -> None:
    reason = DEFAULT.check("http://127.0.0.1:5000")
    assert reason == (
        f"127.0.0.1 is a loopback address; the operator calls it only if {ALLOWED_ENV} lists it "
        "(127.0.0.1 or a range within 127.0.0.0/8)"
    )


@pytest.mark.parametrize(
    ("allowed", "url", "allowed_then"),
    [
        # A refused range opens only to an entry within it: loopback for a local operator...
        ("*,127.0.0.0/8", "http://127.0.0.1:5000", True),
        ("*,127.0.0.1", "http://127.0.0.1:5000", True),
        ("*,127.0.0.1", "http://127.0.0.2:5000", False),
        ("*,127.0.0.0/8", "http://169.254.169.254/", False),
        # ...never to a wide one, nor to a name entry alone (its addresses are checked at connect).
        ("*,0.0.0.0/0", "http://127.0.0.1:5000", False),
        ("*,0.0.0.0/0", "http://169.254.169.254/", False),
        ("*,10.0.0.0/8", "https://10.96.0.1", False),
        ("*,10.96.0.1", "https://10.96.0.1", True),
        ("*,::1", "http://[::1]:5000", True),
        # A refused name opens only to that exact name, not to a wildcard that covers it.
        ("*,localhost", "http://localhost:5000", True),
        ("*.svc.cluster.local", "https://kubernetes.default.svc.cluster.local", False),
        ("kubernetes.default.svc.cluster.local", "https://kubernetes.default.svc.cluster.local", True),
        # A list without * allows only what it names.
        ("mlflow.example.com", "https://mlflow.example.com", True),
        ("mlflow.example.com", "https://MLflow.Example.com.", True),
        ("mlflow.example.com", "https://other.example.com", False),
        ("*.example.com", "https://mlflow.example.com", True),
        ("*.example.com", "https://example.com", False),
        ("10.0.0.0/8", "http://10.1.2.3:5000", True),
        ("10.0.0.0/8", "http://192.168.1.1:5000", False),
        ("10.0.0.0/8 192.168.0.0/16", "http://192.168.1.1:5000", True),
        ("fd00::/8", "http://[fd12::1]:5000", True),
        ("::ffff:10.0.0.0/104", "http://10.1.2.3:5000", True),
    ],
)
def test_an_allow_list_opens_what_it_names(allowed: str, url: str, allowed_then: bool) -> None:
    destinations = Destinations.from_env({**POD_ENV, ALLOWED_ENV: allowed})
    assert (destinations.check(url) is None) is allowed_then, destinations.check(url)


def test_a_name_is_checked_again_at_connect_time_by_the_addresses_it_resolved_to() -> None:
    # A name the list allows, or any name under *, may resolve to anything: what it resolved to
    # when the connection is made decides (DNS rebinding, a CNAME to the metadata server).
    assert DEFAULT.check("https://mlflow.tenant-b.example.com") is None
    refused = DEFAULT.check_address("mlflow.tenant-b.example.com", "169.254.169.254")
    assert refused is not None
    assert refused.startswith("mlflow.tenant-b.example.com (169.254.169.254) is a link-local address")
    assert DEFAULT.check_address("mlflow.tenant-b.example.com", "10.0.3.7") is None
    assert DEFAULT.check_address("mlflow", "::ffff:127.0.0.1") is not None
    named = Destinations.parse("mlflow.example.com")
    assert named.check_address("mlflow.example.com", "203.0.113.9") is None
    assert named.check_address("mlflow.example.com", "127.0.0.1") is not None
    ranges = Destinations.parse("10.0.0.0/8")
    assert ranges.check("http://mlflow.internal:5000") is None  # decided by its addresses
    assert ranges.check_address("mlflow.internal", "10.4.4.4") is None
    assert ranges.check_address("mlflow.internal", "203.0.113.9") is not None


def test_a_connection_is_checked_by_its_name_and_every_address_it_resolved_to() -> None:
    # What every outbound client checks when it connects (aliasroll.outbound): one refused address
    # refuses the name, whichever the connection would have used.
    reason = DEFAULT.check_connection("prometheus.evil.example", ["203.0.113.5", "169.254.169.254"])
    assert reason is not None
    assert reason.startswith("prometheus.evil.example (169.254.169.254) is a link-local address")
    assert DEFAULT.check_connection("prom.monitoring", ["10.0.0.9"]) is None
    # The name is checked as a name too, whatever it resolved to.
    api = DEFAULT.check_connection("kubernetes.default.svc", ["10.0.0.9"])
    assert api is not None
    assert "the Kubernetes API server" in api
    listed = Destinations.parse("*.svc.cluster.local")
    unlisted = listed.check_connection("metrics.elsewhere.example", ["10.0.0.9"])
    assert unlisted is not None
    assert "not in ALIASROLL_ALLOWED_DESTINATIONS" in unlisted
    # An address as the host: checked as the address, as `check` does for a URL naming it.
    assert DEFAULT.check_connection("127.0.0.1", ["127.0.0.1"]) == DEFAULT.check("http://127.0.0.1:9090")


def test_refused_destinations_can_be_added() -> None:
    destinations = Destinations.from_env(
        {"ALIASROLL_REFUSED_DESTINATIONS": "10.0.0.0/24, vault.example.com *.corp.example.com"}
    )
    assert destinations.check("http://10.0.0.7:5000") is not None
    assert destinations.check("http://10.0.1.7:5000") is None
    assert destinations.check("https://vault.example.com") is not None
    assert destinations.check("https://mlflow.corp.example.com") is not None
    assert "refused by ALIASROLL_REFUSED_DESTINATIONS" in (destinations.check("http://10.0.0.7") or "")
    opened = Destinations.from_env(
        {"ALIASROLL_REFUSED_DESTINATIONS": "10.0.0.0/24", ALLOWED_ENV: "*,10.0.0.7/32"}
    )
    assert opened.check("http://10.0.0.7:5000") is None


@pytest.mark.parametrize(
    "allowed", ["", " , ", "mlflow..example.com", "10.0.0.0/33", "http://mlflow", "a b/c"]
)
def test_a_setting_that_cannot_be_read_is_refused_at_start(allowed: str) -> None:
    if not allowed.replace(",", " ").strip():
        # Unset or empty: the default (any destination not refused).
        assert Destinations.from_env({ALLOWED_ENV: allowed}).any_host
        with pytest.raises(ValueError, match="is empty"):
            Destinations.parse(allowed)
        return
    with pytest.raises(ValueError, match=ALLOWED_ENV):
        Destinations.parse(allowed)


def test_the_start_up_log_says_what_is_allowed_and_refused() -> None:
    text = DEFAULT.describe()
    assert text.startswith("allowed: *; refused unless named narrowly: loopback")
    assert "10.96.0.1/32 (the Kubernetes API server)" in text
