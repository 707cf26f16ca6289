"""A steady load on a model server, recording every answer: run inside the node's network namespace
(`nsenter --net=... python tests/support/load.py ...`), where Service ClusterIPs are reachable.

Open loop: requests start at a fixed rate whatever the answers take, each on a new connection (as
many clients do, and so kube-proxy spreads them over the Service's ready pods). Bounded in count
and time, and it stops by itself; SIGTERM ends it early. One JSON line per request (to a file, or
to standard output with `--out -`): {"t": start (s since the run began, or on CLOCK_MONOTONIC with
`--monotonic`, which a caller in the same machine shares), "ms": duration, "status": HTTP status or
0, "version": the X-Model-Version header, "error": what failed to connect or read, if anything}.
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

BODY = json.dumps({"inputs": ["this is great", "this is terrible"]}).encode()


def command(address: str, *, rate: float, seconds: float, out: str, monotonic: bool = False) -> list[str]:
    """This script's command line against a model server at `address` (host or host:port), for a
    caller to run where the address is reachable (`RealNode.nsenter_argv`)."""
    return [
        sys.executable,
        __file__,
        f"--url=http://{address}/invocations",
        f"--rate={rate}",
        f"--seconds={seconds}",
        f"--out={out}",
        *(["--monotonic"] if monotonic else []),
    ]


def one_request(host: str, port: int, path: str, timeout: float) -> dict[str, object]:
    started = time.monotonic()
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("POST", path, body=BODY, headers={"Content-Type": "application/json"})
        answer = connection.getresponse()
        answer.read()
        return {
            "status": answer.status,
            "version": answer.getheader("X-Model-Version"),
            "ms": round(1000 * (time.monotonic() - started), 2),
        }
    except (OSError, http.client.HTTPException) as error:
        return {
            "status": 0,
            "error": f"{type(error).__name__}: {error}",
            "ms": round(1000 * (time.monotonic() - started), 2),
        }
    finally:
        connection.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="http://ADDRESS[:PORT]/invocations")
    parser.add_argument("--rate", type=float, default=60.0, help="requests started per second")
    parser.add_argument("--seconds", type=float, required=True, help="how long to run (at most 900)")
    parser.add_argument("--max-requests", type=int, default=100_000)
    parser.add_argument("--timeout", type=float, default=10.0, help="per request")
    parser.add_argument("--out", required=True, help="JSON lines file, or - for standard output")
    parser.add_argument("--monotonic", action="store_true", help="starts on CLOCK_MONOTONIC")
    args = parser.parse_args(argv)
    seconds = min(args.seconds, 900.0)
    url = urlsplit(args.url)
    host, port, path = url.hostname or "127.0.0.1", url.port or 80, url.path or "/invocations"

    # SIGTERM only sets a flag: a handler that took a lock (Event.set) could deadlock with the
    # main thread it interrupts while that thread holds the same lock (inside Event.wait).
    stopping: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    lock = threading.Lock()
    began = time.monotonic()
    origin = 0.0 if args.monotonic else began
    out = sys.stdout if args.out == "-" else open(args.out, "w")  # noqa: SIM115 - closed below
    try:
        with ThreadPoolExecutor(max_workers=32) as pool:

            def record(start: float) -> None:
                result = one_request(host, port, path, args.timeout)
                result["t"] = round(start - origin, 3)
                with lock:
                    out.write(json.dumps(result) + "\n")
                    out.flush()

            interval = 1.0 / args.rate
            for sent in range(args.max_requests):
                due = began + sent * interval
                while not stopping and (delay := due - time.monotonic()) > 0:
                    time.sleep(min(delay, 0.05))
                if due - began > seconds or stopping:
                    break
                pool.submit(record, time.monotonic())
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
