"""An HTTP CONNECT proxy on a Unix socket, run inside the real node's network namespace: the API
server's egress selector (``cluster``) dials kubelets, pods and Services through it, so ``kubectl
logs``/``exec``/``port-forward`` reach the real node although the API server lives on the host's
loopback. Standard library only; started as a script (``python3 egress.py --socket PATH ...``).

The API server asks for ``CONNECT <node name>:10250``: ``--host NAME=ADDRESS`` maps such names (which
no resolver knows) to addresses inside the namespace.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import threading
from collections.abc import Sequence

_MAX_HEAD = 16 * 1024


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def _handle(conn: socket.socket, hosts: dict[str, str]) -> None:
    with conn:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(4096)
            if not chunk or len(head) > _MAX_HEAD:
                return
            head += chunk
        request, rest = head.split(b"\r\n\r\n", 1)
        parts = request.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(parts) != 3 or parts[0] != "CONNECT" or ":" not in parts[1]:
            conn.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            return
        host, port = parts[1].rsplit(":", 1)
        host = hosts.get(host, host).strip("[]")
        try:
            upstream = socket.create_connection((host, int(port)), timeout=10)
        except (OSError, ValueError) as e:
            conn.sendall(f"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nX-Error: {e}\r\n\r\n".encode())
            return
        with upstream:
            upstream.settimeout(None)
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if rest:
                upstream.sendall(rest)
            back = threading.Thread(target=_pipe, args=(upstream, conn), daemon=True)
            back.start()
            _pipe(conn, upstream)
            back.join()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    parser.add_argument("--socket", required=True, help="Unix socket to listen on")
    parser.add_argument("--host", action="append", default=[], help="NAME=ADDRESS (repeatable)")
    args = parser.parse_args(argv)
    hosts = dict(h.split("=", 1) for h in args.host)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(args.socket)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(args.socket)
    os.chmod(args.socket, 0o600)
    server.listen(64)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=_handle, args=(conn, hosts), daemon=True).start()


if __name__ == "__main__":
    raise SystemExit(main())
