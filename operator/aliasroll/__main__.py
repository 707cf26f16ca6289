"""`python -m aliasroll`: run the operator, as the container does and as `make run` does locally."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
from collections.abc import Mapping
from typing import Any, cast

import kopf

from aliasroll import __version__


def own_identity(env: Mapping[str, str] = os.environ) -> str:
    """Who this process is, for Kopf's logs and peering: the pod's name (POD_ID or POD_NAME from the
    downward API), else the host's name. Never the user's name: Kopf's default asks the passwd
    database (getpass.getuser()), and a container may run as a uid that has no entry there."""
    return env.get("POD_ID") or env.get("POD_NAME") or socket.gethostname()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="aliasroll", description="Serve MLflow registered models by alias.")
    parser.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch only this namespace (repeatable; default: all namespaces)",
    )
    parser.add_argument(
        "--liveness",
        default=None,
        metavar="URL",
        help="serve a liveness probe, e.g. http://0.0.0.0:8080/healthz",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"aliasroll {__version__}")
    args = parser.parse_args(argv)

    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.PLAIN)
    for noisy in ("httpx", "httpx2", "httpcore", "httpcore2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Registering the handlers is importing the module.
    import aliasroll.controller.handlers  # noqa: F401

    asyncio.run(
        kopf.operator(
            standalone=True,
            # Kopf's Identity is a NewType of str, not exported by the kopf package.
            identity=cast(Any, own_identity()),
            clusterwide=not args.namespace,
            namespaces=args.namespace,
            liveness_endpoint=args.liveness,
            memo=kopf.Memo(watched_namespaces=tuple(args.namespace)),  # for the resync's list
        )
    )


if __name__ == "__main__":
    main()
