"""`python -m aliasroll.serving`: the serving image's entry point (and the tests').

Exit codes: 0 on a normal stop (SIGTERM, drained: see server.py), 1 when the model version cannot
be downloaded, loaded or warmed up (Kubernetes restarts the pod and the rollout stalls instead of
sending traffic to it) or when a predict call outlived the drain, 2 for a bad setting (or a port
that cannot be listened on).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path

from aliasroll.serving.app import ServingApp
from aliasroll.serving.config import ConfigError, ServingConfig
from aliasroll.serving.redaction import redact, secret_values
from aliasroll.serving.server import DrainingServer

log = logging.getLogger("aliasroll.serving")

# What the kubelet keeps of a termination message.
TERMINATION_MESSAGE_LIMIT = 4096


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = ServingConfig.from_env()
    except ConfigError as error:
        log.error("%s", error)
        return 2
    logging.getLogger().setLevel(config.log_level.upper())
    failure: list[str] = []
    server: DrainingServer | None = None

    def fatal(message: str) -> None:
        log.error("%s", message)
        failure.append(message)
        if server is not None:
            server.should_exit = True

    app = ServingApp(config, on_fatal=fatal)
    try:
        # The serving port (what Services route to) and the admin port (probes, /metrics): one
        # server, one app, which tells them apart by the port a request arrived on (app.py).
        sockets = [listen(config.host, config.port), listen(config.host, config.admin_port)]
    except OSError as error:
        log.error("cannot listen on %s: %s", config.host, error)
        return 2
    server = DrainingServer.for_app(
        app,
        host=config.host,
        port=config.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,  # the metrics count requests; a log line each costs more than the request
        log_level=config.log_level,
        timeout_keep_alive=75,  # longer than common client and load-balancer idle timeouts
    )
    log.info(
        "serving %s on %s:%d, admin endpoints on port %d (loading)",
        config.model_uri,
        config.host,
        config.port,
        config.admin_port,
    )
    try:
        server.run(sockets=sockets)
    except Exception as error:  # a bug of ours: the pod still says why it stopped, in our words
        log.exception("the server stopped on an unexpected error")
        failure.append(f"the model server stopped on an unexpected error: {type(error).__name__}")
    if failure:
        write_termination_message(failure[0])
        return 1
    return 0


def listen(host: str, port: int) -> socket.socket:
    """A bound TCP socket as uvicorn binds its own (uvicorn starts listening on it)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise OSError(f"port {port}: {error.strerror or error}") from None
    sock.set_inheritable(True)
    return sock


def write_termination_message(message: str) -> None:
    """Kubernetes shows this file's text in the container's terminated state, where the operator
    reads why the version could not start (README: "When a version cannot start") and copies it into
    the resource's status: always redacted here, whatever the caller did. (The pod's
    terminationMessagePolicy is File: the kubelet never copies the log, which holds what the model
    printed, in its place.)"""
    given = os.environ.get("TERMINATION_MESSAGE_PATH")
    path = Path(given or "/dev/termination-log")
    if not given and not path.exists():
        return  # not in a pod: the log has it
    try:
        path.write_text(redact(message, secret_values(os.environ))[:TERMINATION_MESSAGE_LIMIT])
    except OSError:
        log.warning("cannot write the termination message to %s", path)


if __name__ == "__main__":
    sys.exit(main())
