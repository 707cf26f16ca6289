"""Certificates of the local cluster, made with openssl: a CA, the API server's serving certificate,
an admin client certificate (system:masters), the service-account key pair, and on demand client and
serving certificates for the real node (its kubelet, kube-proxy and CoreDNS)."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Sequence
from pathlib import Path

from .common import ClusterError

DAYS = "3650"
#: Names the API server's certificate carries: loopback for the host and the node's bridge, the
#: ``kubernetes`` Service's ClusterIP and DNS names for pods (incluster.py), as kubeadm's.
APISERVER_SANS = (
    "IP:127.0.0.1",
    "DNS:localhost",
    "IP:10.0.0.1",
    "DNS:kubernetes.default.svc.cluster.local",
    "DNS:kubernetes.default.svc",
    "DNS:kubernetes.default",
    "DNS:kubernetes",
)
# Newer Python TLS is strict: key identifiers and key usage on every certificate.
_COMMON_EXT = "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid:always\n"
_CA_EXT = (
    "basicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign, digitalSignature\n"
)
_LEAF_EXT = "basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n"


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ClusterError(f"openssl {' '.join(args)} failed:\n{result.stderr.strip()}")


def _ec_key(pki: Path, name: str) -> None:
    # ECDSA P-256 for TLS keys: generated instantly.
    _openssl(
        "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", f"{name}.key", cwd=pki
    )
    (pki / f"{name}.key").chmod(0o600)


def issue(
    pki: Path, name: str, *, subject: str, server_sans: Sequence[str] = (), client: bool = False
) -> tuple[Path, Path]:
    """Issue ``<name>.crt``/``<name>.key`` from the CA in ``pki``: a server certificate for
    ``server_sans`` (e.g. ``IP:10.1.2.3``) and/or a client certificate. Returns (cert, key)."""
    usages = [u for u, on in (("serverAuth", bool(server_sans)), ("clientAuth", client)) if on]
    if not usages:
        raise ValueError("a certificate must be for a server, a client, or both")
    ext = _LEAF_EXT + _COMMON_EXT + f"extendedKeyUsage = {', '.join(usages)}\n"
    if server_sans:
        ext += f"subjectAltName = {', '.join(server_sans)}\n"
    (pki / f"{name}.ext").write_text(f"[leaf]\n{ext}")
    _ec_key(pki, name)
    _openssl("req", "-new", "-key", f"{name}.key", "-subj", subject, "-config", "openssl.cnf",
             "-out", f"{name}.csr", cwd=pki)  # fmt: skip
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-set_serial", f"0x{secrets.token_hex(16)}", "-days", DAYS, "-sha256",
        "-extfile", f"{name}.ext", "-extensions", "leaf", "-out", f"{name}.crt", cwd=pki,
    )  # fmt: skip
    return pki / f"{name}.crt", pki / f"{name}.key"


def make_pki(pki: Path) -> None:
    """The CA, ``apiserver`` (serving), ``admin`` (client, system:masters), ``apiserver-kubelet-client``
    (what the API server shows a kubelet) and the RSA service-account key pair ``sa.key``/``sa.pub``."""
    pki.mkdir(parents=True, exist_ok=True)
    (pki / "openssl.cnf").write_text(
        "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = unused\n[ca]\n" + _CA_EXT + _COMMON_EXT
    )
    _ec_key(pki, "ca")
    _openssl("req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=aliasroll-local-ca", "-days", DAYS,
             "-sha256", "-config", "openssl.cnf", "-extensions", "ca", "-out", "ca.crt", cwd=pki)  # fmt: skip
    issue(pki, "apiserver", subject="/CN=kube-apiserver", server_sans=APISERVER_SANS)
    issue(pki, "admin", subject="/O=system:masters/CN=admin", client=True)
    issue(
        pki,
        "apiserver-kubelet-client",
        subject="/O=system:masters/CN=kube-apiserver-kubelet-client",
        client=True,
    )
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "sa.key", cwd=pki)
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
    (pki / "sa.key").chmod(0o600)
