"""Which destinations the operator contacts on a tenant's behalf: one decision, used by every path
that calls a URL taken from a ModelDeployment (spec.registry.trackingUri; the canary analysis'
Prometheus address).

A ModelDeployment's URLs are chosen by whoever may create one in a namespace, and the operator calls
them from its own network position, with the credentials the resource names. So a tenant URL is
called only when it matches the operator's allow-list (ALIASROLL_ALLOWED_DESTINATIONS), and a few
kinds of addresses are refused even then, unless the list names them on purpose:

- loopback, "this host" (0.0.0.0/8, ::), link-local (169.254.0.0/16, where clouds serve instance
  metadata and credentials, and fe80::/10), other cloud metadata addresses, multicast and broadcast;
- the Kubernetes API server: the `kubernetes` Service (KUBERNETES_SERVICE_HOST) and its names;
- the node and the operator's own pod, when their addresses are given (HOST_IP(S), POD_IP(S) from
  the downward API);
- whatever ALIASROLL_REFUSED_DESTINATIONS adds (the API server's endpoints, the nodes' network).

Such an address is reached only through an allow-list entry at least as narrow as the range it is
in (`127.0.0.1` or `127.0.0.0/8` opens loopback; `*` or `0.0.0.0/0` does not). The default list is
`*`: every other name and address, private cluster ranges included (MLflow usually runs in the
cluster). A name is checked against the name entries (`check`, before a call), and again when the
connection is made, with the addresses it resolved to then (`check_connection`: aliasroll.outbound
makes that check for every client), so a name that resolves to a refused address (DNS rebinding, a
CNAME to the metadata server) is refused too.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

ALLOWED_ENV = "ALIASROLL_ALLOWED_DESTINATIONS"
REFUSED_ENV = "ALIASROLL_REFUSED_DESTINATIONS"
DEFAULT_ALLOWED = "*"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

LOOPBACK = "a loopback address"
THIS_HOST = "an address of this host (0.0.0.0/8, ::)"
LINK_LOCAL = "a link-local address (where clouds serve instance metadata)"
METADATA = "a cloud metadata address"
MULTICAST = "a multicast or broadcast address"
API_SERVER = "the Kubernetes API server"
NODE = "an address of the operator's node"
OWN_POD = "an address of the operator's own pod"
REFUSED_BY_SETTING = f"refused by {REFUSED_ENV}"

#: Always refused unless the allow-list names them narrowly (see the module's docstring).
BUILT_IN_REFUSED: tuple[tuple[str, str], ...] = (
    ("127.0.0.0/8", LOOPBACK),
    ("::1/128", LOOPBACK),
    ("0.0.0.0/8", THIS_HOST),
    ("::/128", THIS_HOST),
    ("169.254.0.0/16", LINK_LOCAL),
    ("fe80::/10", LINK_LOCAL),
    ("100.100.100.200/32", METADATA),  # Alibaba Cloud
    ("fd00:ec2::254/128", METADATA),  # AWS, over IPv6
    ("224.0.0.0/4", MULTICAST),
    ("ff00::/8", MULTICAST),
    ("255.255.255.255/32", MULTICAST),
)
#: Names refused before anything is resolved (their addresses are refused anyway; the name says it
#: sooner and more clearly). "*." entries match any name below; a trailing "." matches names that
#: continue (kubernetes.default.svc.<cluster domain>).
BUILT_IN_REFUSED_NAMES: tuple[tuple[str, str], ...] = (
    ("localhost", LOOPBACK),
    ("*.localhost", LOOPBACK),
    ("kubernetes", API_SERVER),
    ("kubernetes.default", API_SERVER),
    ("kubernetes.default.svc", API_SERVER),
    ("kubernetes.default.svc.", API_SERVER),
    ("metadata", METADATA),
    ("metadata.google.internal", METADATA),
    ("instance-data", METADATA),
    ("instance-data.ec2.internal", METADATA),
)


@dataclass(frozen=True)
class _Refused:
    network: Network
    what: str


@dataclass(frozen=True)
class Destinations:
    """The allow-list and the refused ranges; `check`, `check_connection` and `check_address` return
    why a destination is refused, or None when it may be contacted. Pure: nothing is resolved here."""

    any_host: bool = True
    names: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()  # from "*.example.com": ".example.com"
    networks: tuple[Network, ...] = ()
    refused: tuple[_Refused, ...] = ()
    refused_names: tuple[tuple[str, str], ...] = BUILT_IN_REFUSED_NAMES
    allowed_text: str = DEFAULT_ALLOWED  # as configured, for messages and the start-up log

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Destinations:
        """From ALIASROLL_ALLOWED_DESTINATIONS (unset or empty: `*`) and ALIASROLL_REFUSED_DESTINATIONS
        (comma- or space-separated), plus the addresses the environment says are the API server's, the node's
        and the pod's. Raises ValueError naming an entry it cannot read."""
        env = os.environ if env is None else env
        extra: list[tuple[str, str]] = []
        service_host = (env.get("KUBERNETES_SERVICE_HOST") or "").strip()
        if service_host:
            extra.append((service_host, API_SERVER))
        for variable, what in (
            ("HOST_IP", NODE),
            ("HOST_IPS", NODE),
            ("POD_IP", OWN_POD),
            ("POD_IPS", OWN_POD),
        ):
            extra.extend((entry, what) for entry in _entries(env.get(variable) or ""))
        extra.extend((entry, REFUSED_BY_SETTING) for entry in _entries(env.get(REFUSED_ENV) or ""))
        allowed = env.get(ALLOWED_ENV) or ""
        return cls.parse(allowed if _entries(allowed) else DEFAULT_ALLOWED, refused=extra)

    @classmethod
    def parse(cls, allowed: str, *, refused: Iterable[tuple[str, str]] = ()) -> Destinations:
        """`allowed`: entries `*` (any name and any address not refused), `host.name`, `*.domain`,
        an address or a CIDR range. `refused`: (address, CIDR or name; what it is) added to the
        built-in refused ranges."""
        entries = _entries(allowed)
        if not entries:
            raise ValueError(f"{ALLOWED_ENV} is empty: name at least one destination, or * for any")
        any_host = False
        names: set[str] = set()
        suffixes: list[str] = []
        networks: list[Network] = []
        for entry in entries:
            if entry == "*":
                any_host = True
            elif (network := _network(entry)) is not None:
                networks.append(network)
            elif entry.startswith("*.") and _is_name(entry[2:]):
                suffixes.append(entry[1:].lower())
            elif _is_name(entry):
                names.add(_normal_name(entry))
            else:
                raise ValueError(
                    f"{ALLOWED_ENV}: {entry!r} is not a host name, *.domain, address or CIDR range"
                )
        refused_ranges = [_Refused(ipaddress.ip_network(net), what) for net, what in BUILT_IN_REFUSED]
        refused_names = list(BUILT_IN_REFUSED_NAMES)
        for entry, what in refused:
            if (network := _network(entry)) is not None:
                refused_ranges.append(_Refused(network, what))
            elif _is_name(entry.removeprefix("*.")):
                refused_names.append((_normal_name(entry), what))
            else:
                raise ValueError(f"{REFUSED_ENV}: {entry!r} is not a host name, address or CIDR range")
        return cls(
            any_host=any_host,
            names=frozenset(names),
            suffixes=tuple(suffixes),
            networks=tuple(networks),
            refused=tuple(refused_ranges),
            refused_names=tuple(refused_names),
            allowed_text=",".join(entries),
        )

    def check(self, url: str) -> str | None:
        """Why `url` may not be contacted, or None. Names are checked as names (their addresses when
        the connection is made: `check_connection`)."""
        try:
            parts = urlsplit(url)
            host = parts.hostname
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            return f"{url!r} is not a URL"
        if parts.scheme not in ("http", "https") or not host:
            return f"{url!r} is not an http:// or https:// URL with a host"
        address = _address(host)
        if address is not None:
            return self._check_ip(address, shown=host)
        return self._check_name(_normal_name(host))

    def check_connection(self, host: str, addresses: Sequence[str]) -> str | None:
        """When a connection is made: why `host` may not be reached at the addresses it resolved to
        (any one refused refuses it), or None. A name is checked as a name too."""
        if _address(host) is None and (reason := self._check_name(_normal_name(host))) is not None:
            return reason
        for address in addresses:
            if (reason := self.check_address(host, address)) is not None:
                return reason
        return None

    def check_address(self, host: str, address: str) -> str | None:
        """At connect time: why `host` may not be reached at `address` (one it resolved to), or None."""
        ip = _address(address)
        if ip is None:
            return f"{address!r} is not an address"
        name = None if _address(host) is not None else _normal_name(host)
        return self._check_ip(ip, shown=address if name is None else f"{name} ({address})", name=name)

    def describe(self) -> str:
        """What is allowed and refused, for the operator's start-up log."""
        extra = [f"{item.network} ({item.what})" for item in self.refused[len(BUILT_IN_REFUSED) :]]
        refused = "loopback, link-local and metadata addresses, multicast, the API server's names"
        if extra:
            refused += ", " + ", ".join(extra)
        return f"allowed: {self.allowed_text}; refused unless named narrowly: {refused}"

    def _check_name(self, name: str) -> str | None:
        for pattern, what in self.refused_names:
            # Only the exact name opens a refused one: `*.svc.cluster.local` is no reason to call
            # kubernetes.default.svc.cluster.local.
            if _name_matches(pattern, name) and name not in self.names:
                return f"{name} is {what}; the operator calls it only if {ALLOWED_ENV} lists that name"
        if self.any_host or self._names_explicitly(name) or self.networks:
            return None  # with address ranges only, its addresses decide (check_address)
        return f"{name} is not in {ALLOWED_ENV} ({self.allowed_text})"

    def _names_explicitly(self, name: str) -> bool:
        return name in self.names or any(name.endswith(suffix) for suffix in self.suffixes)

    def _check_ip(self, ip: Address, *, shown: str, name: str | None = None) -> str | None:
        for item in self.refused:
            if ip in item.network:
                if any(ip in net and _within(net, item.network) for net in self.networks):
                    return None
                return (
                    f"{shown} is {item.what}; the operator calls it only if {ALLOWED_ENV} lists it "
                    f"({ip} or a range within {item.network})"
                )
        if self.any_host or any(ip in net for net in self.networks):
            return None
        if name is not None and self._names_explicitly(name):
            return None
        return f"{shown} is not in {ALLOWED_ENV} ({self.allowed_text})"


def _entries(text: str) -> list[str]:
    return [entry for entry in text.replace(",", " ").split() if entry]


def _network(entry: str) -> Network | None:
    try:
        network = ipaddress.ip_network(entry.strip("[]"), strict=False)
    except ValueError:
        return None
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:  # ::ffff:a.b.c.d/n: the IPv4 range it stands for
            return ipaddress.ip_network(f"{mapped}/{network.prefixlen - 96}")
    return network


def _address(text: str) -> Address | None:
    """An IP address (IPv6 zone dropped, IPv4-mapped IPv6 as the IPv4 it carries), or None for a name."""
    try:
        ip = ipaddress.ip_address(text.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _within(inner: Network, outer: Network) -> bool:
    return inner.version == outer.version and inner.subnet_of(outer)  # type: ignore[arg-type]


def _normal_name(name: str) -> str:
    return name.strip().lower().rstrip(".")


def _is_name(text: str) -> bool:
    text = text.rstrip(".")
    labels = text.split(".")
    return bool(text) and all(
        label and len(label) <= 63 and all(c.isalnum() or c in "-_" for c in label) for label in labels
    )


def _name_matches(pattern: str, name: str) -> bool:
    if pattern.startswith("*."):
        return name.endswith(pattern[1:])
    if pattern.endswith("."):
        return name.startswith(pattern)
    return name == pattern
