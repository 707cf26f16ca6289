"""Kubeconfig files for the local cluster (admin, token users, the real node's kubelet)."""

from __future__ import annotations

import base64
from pathlib import Path

from .common import write_private, yaml_str

CLUSTER_NAME = "aliasroll-local"


def kubeconfig_text(
    *, server: str, ca_pem: bytes, user: str, credentials: dict[str, str], namespace: str | None = None
) -> str:
    b64 = base64.b64encode(ca_pem).decode()
    ns_line = f"\n    namespace: {yaml_str(namespace)}" if namespace else ""
    creds = "".join(f"\n    {key}: {yaml_str(value)}" for key, value in credentials.items())
    return (
        "apiVersion: v1\n"
        "kind: Config\n"
        "clusters:\n"
        f"- name: {CLUSTER_NAME}\n"
        "  cluster:\n"
        f"    server: {yaml_str(server)}\n"
        f"    certificate-authority-data: {b64}\n"
        "users:\n"
        f"- name: {yaml_str(user)}\n"
        f"  user:{creds}\n"
        "contexts:\n"
        f"- name: {CLUSTER_NAME}\n"
        "  context:\n"
        f"    cluster: {CLUSTER_NAME}\n"
        f"    user: {yaml_str(user)}{ns_line}\n"
        f"current-context: {CLUSTER_NAME}\n"
    )


def write_cert_kubeconfig(path: Path, *, server: str, ca: Path, cert: Path, key: Path, user: str) -> Path:
    """A kubeconfig authenticating with a client certificate (embedded, so the file stands alone)."""
    creds = {
        "client-certificate-data": base64.b64encode(cert.read_bytes()).decode(),
        "client-key-data": base64.b64encode(key.read_bytes()).decode(),
    }
    write_private(path, kubeconfig_text(server=server, ca_pem=ca.read_bytes(), user=user, credentials=creds))
    return path
