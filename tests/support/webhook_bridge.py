"""A port inside the real node's network namespace, reachable from host loopback: the reverse of
`RealNode.expose_host_port`, for a registry webhook the MLflow server (on the host) delivers to an
operator that runs inside the namespace. A socat on host loopback forwards each connection through a
Unix socket to a socat inside the namespace, which connects to 127.0.0.1:<port> there."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from localkube import RealNode
from mlflowserver import free_port


@contextmanager
def node_port_on_host(
    node: RealNode, port: int, sock_dir: Path, *, name: str = "webhook-bridge"
) -> Iterator[str]:
    """`host:port` on host loopback that reaches 127.0.0.1:`port` inside the node's namespace, for the
    length of the `with` block."""
    sock = sock_dir / f"{name}.sock"
    sock.unlink(missing_ok=True)
    node.start_process(
        f"{name}-node", ["socat", f"UNIX-LISTEN:{sock},fork,mode=600", f"TCP:127.0.0.1:{port}"], exe="socat"
    )
    host: subprocess.Popen[bytes] | None = None
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the bridge's socat did not listen on {sock}:\n{node.process_log(f'{name}-node')}"
                )
            time.sleep(0.02)
        outside = free_port()
        host = subprocess.Popen(
            ["socat", f"TCP-LISTEN:{outside},bind=127.0.0.1,fork,reuseaddr", f"UNIX-CONNECT:{sock}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        yield f"127.0.0.1:{outside}"
    finally:
        if host is not None:
            host.terminate()
            host.wait(timeout=10)
        node.stop_process(f"{name}-node")
