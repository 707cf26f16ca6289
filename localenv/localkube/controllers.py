"""kube-controller-manager (all controllers: node lifecycle, garbage collector, ...) and kube-scheduler."""

from __future__ import annotations

import http.client
import ssl
import urllib.request
from collections.abc import Callable
from pathlib import Path

from .apiserver import SERVICE_CIDR


def _common(kubeconfig: Path, port: int) -> list[str]:
    return [
        f"--kubeconfig={kubeconfig}",
        # No --authentication/authorization-kubeconfig: the health paths need neither, and without
        # an apiserver --requestheader-client-ca-file they only fill the logs with errors.
        "--leader-elect=false",
        "--bind-address=127.0.0.1",
        "--authorization-always-allow-paths=/healthz,/readyz,/livez",
        f"--secure-port={port}",
    ]


def controller_manager_args(*, kubeconfig: Path, port: int, pki: Path) -> list[str]:
    return [
        *_common(kubeconfig, port),
        # The defaults (20 requests/s, bursts of 30) queue a thousand Deployments for minutes behind
        # the controllers' own client (the scheduler's are 50 and 100 already).
        "--kube-api-qps=200",
        "--kube-api-burst=400",
        f"--service-account-private-key-file={pki / 'sa.key'}",
        f"--root-ca-file={pki / 'ca.crt'}",
        "--use-service-account-credentials=true",
        f"--cluster-signing-cert-file={pki / 'ca.crt'}",
        f"--cluster-signing-key-file={pki / 'ca.key'}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
    ]


def scheduler_args(*, kubeconfig: Path, port: int) -> list[str]:
    return _common(kubeconfig, port)


def healthz(port: int) -> Callable[[], bool]:
    """A check that the component on ``port`` answers /healthz with ok."""
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE  # self-signed serving certs generated in memory

    def check() -> bool:
        try:
            with urllib.request.urlopen(
                f"https://127.0.0.1:{port}/healthz", context=insecure, timeout=2.0
            ) as r:
                return bool(r.read().strip() == b"ok")
        except (OSError, http.client.HTTPException):
            return False

    return check
