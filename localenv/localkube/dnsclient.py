"""A minimal DNS client (standard library only) for the local cluster's DNS, where no dig or nslookup
is at hand: the real node's readiness check and the tests run it as a script inside the node's
network namespace, e.g. ``python3 dnsclient.py --server 10.0.0.10 [--tcp] [--type PTR] NAME``, which
prints one JSON object: ``{"rcode": "NOERROR", "answers": ["10.0.0.1"], "seconds": 0.002}`` (or
``{"error": ...}`` and exit code 1 when no answer came).

One question per query, recursion desired, no EDNS; A, AAAA, PTR, CNAME and SRV records are decoded,
others shown as hex.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import secrets
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass

QTYPES = {"A": 1, "CNAME": 5, "SOA": 6, "PTR": 12, "AAAA": 28, "SRV": 33}
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
_CLASS_IN = 1


class DNSFormatError(ValueError):
    """A packet that is not a well-formed answer to our query."""


@dataclass(frozen=True)
class Answer:
    rcode: str
    #: (type name, value) of each record of the answer section, in order.
    records: tuple[tuple[str, str], ...]

    def values(self, qtype: str) -> list[str]:
        return [value for kind, value in self.records if kind == qtype]


def encode_name(name: str) -> bytes:
    """``name`` (absolute or not: it is sent as given, no search list) in wire format."""
    out = b""
    for label in name.rstrip(".").split(".") if name.rstrip(".") else []:
        raw = label.encode("ascii")
        if not 0 < len(raw) < 64:
            raise ValueError(f"bad label {label!r} in {name!r}")
        out += bytes([len(raw)]) + raw
    return out + b"\0"


def build_query(name: str, qtype: str = "A", *, ident: int = 0) -> bytes:
    """A query packet: header (ID, RD set, one question) and the question."""
    header = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0)
    return header + encode_name(name) + struct.pack("!HH", QTYPES[qtype], _CLASS_IN)


def decode_name(packet: bytes, offset: int) -> tuple[str, int]:
    """The (possibly compressed) name at ``offset``, and the offset just after it."""
    labels: list[str] = []
    end: int | None = None
    jumps = 0
    while True:
        if offset >= len(packet):
            raise DNSFormatError("name runs past the packet")
        length = packet[offset]
        if length & 0xC0 == 0xC0:
            if offset + 1 >= len(packet):
                raise DNSFormatError("truncated compression pointer")
            if end is None:
                end = offset + 2
            jumps += 1
            if jumps > 64:
                raise DNSFormatError("compression loop")
            offset = ((length & 0x3F) << 8) | packet[offset + 1]
            continue
        if length == 0:
            return (".".join(labels) + "." if labels else "."), (end if end is not None else offset + 1)
        labels.append(packet[offset + 1 : offset + 1 + length].decode("ascii", errors="replace"))
        offset += 1 + length


def _rdata(packet: bytes, kind: int, start: int, length: int) -> tuple[str, str]:
    data = packet[start : start + length]
    names = {v: k for k, v in QTYPES.items()}
    type_name = names.get(kind, f"TYPE{kind}")
    if kind == QTYPES["A"] and length == 4:
        return type_name, str(ipaddress.IPv4Address(data))
    if kind == QTYPES["AAAA"] and length == 16:
        return type_name, str(ipaddress.IPv6Address(data))
    if kind in (QTYPES["PTR"], QTYPES["CNAME"]):
        return type_name, decode_name(packet, start)[0]
    if kind == QTYPES["SRV"] and length >= 7:
        priority, weight, port = struct.unpack("!HHH", data[:6])
        return type_name, f"{priority} {weight} {port} {decode_name(packet, start + 6)[0]}"
    return type_name, data.hex()


def parse_response(packet: bytes, *, ident: int | None = None) -> Answer:
    """The rcode and answer records of a response (to the query ``ident`` when given)."""
    if len(packet) < 12:
        raise DNSFormatError("shorter than a DNS header")
    got_id, flags, qdcount, ancount, _, _ = struct.unpack("!HHHHHH", packet[:12])
    if ident is not None and got_id != ident:
        raise DNSFormatError(f"answer to query {got_id}, not {ident}")
    if not flags & 0x8000:
        raise DNSFormatError("not a response")
    offset = 12
    for _ in range(qdcount):
        offset = decode_name(packet, offset)[1] + 4
    records = []
    for _ in range(ancount):
        offset = decode_name(packet, offset)[1]
        if offset + 10 > len(packet):
            raise DNSFormatError("truncated record")
        kind, _cls, _ttl, length = struct.unpack("!HHIH", packet[offset : offset + 10])
        offset += 10
        if offset + length > len(packet):
            raise DNSFormatError("truncated record data")
        records.append(_rdata(packet, kind, offset, length))
        offset += length
    rcode = flags & 0x000F
    return Answer(rcode=RCODES.get(rcode, f"RCODE{rcode}"), records=tuple(records))


def _recv_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise DNSFormatError("connection closed mid-answer")
        data += chunk
    return data


def resolve(
    server: str, name: str, qtype: str = "A", *, port: int = 53, tcp: bool = False, timeout: float = 2.0
) -> Answer:
    """Ask ``server`` once (UDP, or TCP with ``tcp``); raises OSError on timeout or refusal."""
    ident = secrets.randbelow(0x10000)
    packet = build_query(name, qtype, ident=ident)
    if tcp:
        with socket.create_connection((server, port), timeout=timeout) as sock:
            sock.sendall(struct.pack("!H", len(packet)) + packet)
            (length,) = struct.unpack("!H", _recv_exactly(sock, 2))
            return parse_response(_recv_exactly(sock, length), ident=ident)
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.connect((server, port))
        sock.send(packet)
        while True:
            try:
                return parse_response(sock.recv(65535), ident=ident)
            except DNSFormatError:
                continue  # a stray or late answer to another query: wait for ours


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    parser.add_argument("--server", required=True)
    parser.add_argument("--port", type=int, default=53)
    parser.add_argument("--type", default="A", choices=sorted(QTYPES))
    parser.add_argument("--tcp", action="store_true")
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("name")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        answer = resolve(
            args.server, args.name, args.type, port=args.port, tcp=args.tcp, timeout=args.timeout
        )
    except (OSError, DNSFormatError) as e:
        print(json.dumps({"error": f"{type(e).__name__}: {e}", "seconds": time.monotonic() - started}))
        return 1
    result = {
        "rcode": answer.rcode,
        "answers": answer.values(args.type),
        "records": [list(r) for r in answer.records],
        "seconds": round(time.monotonic() - started, 4),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
