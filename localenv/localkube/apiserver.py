"""kube-apiserver on a free loopback port, and the admin HTTPS client the harness checks it with."""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

#: Room for thousands of Services (a /24 filled at about 250 ModelDeployments). The first address
#: is the ``kubernetes`` Service, named in the API server's certificate.
SERVICE_CIDR = "10.0.0.0/16"

#: Whose requests the audit log records: the ServiceAccounts of the operator's namespace, i.e. the
#: operator's own (``system:serviceaccount:aliasroll-system:aliasroll``) and the namespaced install's
#: that tests/e2e/test_install.py makes beside it. Nobody else's: the log stays small and cheap to
#: write, and tests/e2e/test_zz_rbac_audit.py compares what these accounts did with what
#: manifests/rbac.yaml grants them.
AUDITED_GROUPS = ("system:serviceaccounts:aliasroll-system",)
#: The audit log, in the logs directory (``LocalCluster.audit_log``); rotated at this many MB, this
#: many old files kept beside it (``kube-apiserver-audit-<time>.log``).
AUDIT_LOG_NAME = "kube-apiserver-audit.log"
AUDIT_LOG_MAX_MB = 200
AUDIT_LOG_BACKUPS = 5


def audit_policy(groups: tuple[str, ...] = AUDITED_GROUPS) -> dict[str, Any]:
    """Metadata (who, verb, resource, subresource, namespace, name, response code; never a body) of
    every request by ``groups``, once the response is known (a watch: once when it starts, once when
    it ends); nothing of anyone else."""
    return {
        "apiVersion": "audit.k8s.io/v1",
        "kind": "Policy",
        "omitStages": ["RequestReceived"],
        "rules": [{"level": "Metadata", "userGroups": list(groups)}, {"level": "None"}],
    }


def write_audit_policy(path: Path) -> Path:
    path.write_text(json.dumps(audit_policy(), indent=2) + "\n")  # JSON is YAML
    return path


def args(
    *,
    etcd_url: str,
    port: int,
    pki: Path,
    egress_config: Path | None = None,
    audit_policy_file: Path | None = None,
    audit_log: Path | None = None,
) -> list[str]:
    """``egress_config``: an EgressSelectorConfiguration (the real node's: kubelets reached through a
    proxy inside its network namespace). ``audit_policy_file`` and ``audit_log``: the audit log of
    ``write_audit_policy``'s accounts (both or neither)."""
    extra = [f"--egress-selector-config-file={egress_config}"] if egress_config is not None else []
    if audit_policy_file is not None and audit_log is not None:
        extra += [
            f"--audit-policy-file={audit_policy_file}",
            f"--audit-log-path={audit_log}",
            "--audit-log-format=json",
            # Each event written before the response goes out: a test that reads the log after a
            # request sees it.
            "--audit-log-mode=blocking",
            f"--audit-log-maxsize={AUDIT_LOG_MAX_MB}",
            f"--audit-log-maxbackup={AUDIT_LOG_BACKUPS}",
        ]
    return [
        *extra,
        f"--etcd-servers={etcd_url}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={port}",
        f"--tls-cert-file={pki / 'apiserver.crt'}",
        f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--client-ca-file={pki / 'ca.crt'}",
        # What it shows a kubelet (logs, exec): the real node's kubelet trusts the same CA.
        f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
        f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
        "--service-account-issuer=https://kubernetes.default.svc",
        f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--authorization-mode=Node,RBAC",
        # As on clusters that enforce it (OpenShift): setting blockOwnerDeletion on an ownerReference
        # needs `update` on the owner's finalizers subresource. The operator's owned objects carry it,
        # so the tiers prove manifests/rbac.yaml's modeldeployments/finalizers grant is needed (an
        # admission check: no request of its own ever shows it in the audit log).
        "--enable-admission-plugins=OwnerReferencesPermissionEnforcement",
        "--allow-privileged=true",
        # It would write its own loopback address, which no pod can reach: the real node writes the
        # ``kubernetes`` Service's endpoints itself (its bridge on the node's address, incluster.py).
        "--endpoint-reconciler-type=none",
    ]


class AdminClient:
    """GETs on the API server as admin, for readiness checks (no kubectl process per poll), and the
    few objects the harness writes itself (server-side apply)."""

    def __init__(self, *, server: str, pki: Path) -> None:
        self.server = server
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        # What Python 3.13 enforces by default; passing here proves the certificates suit strict clients.
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        self._ctx = ctx

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        """(status, body) of an admin GET; (0, b"") when the API server cannot be reached."""
        try:
            with urllib.request.urlopen(self.server + path, context=self._ctx, timeout=timeout) as resp:
                return int(resp.status), bytes(resp.read())
        except urllib.error.HTTPError as e:
            with e:
                return int(e.code), bytes(e.read())
        except (OSError, http.client.HTTPException):
            return 0, b""

    def apply(self, path: str, obj: dict[str, Any], *, field_manager: str = "localkube") -> tuple[int, bytes]:
        """Server-side apply of ``obj`` at ``path`` (e.g. ``/api/v1/namespaces/default/endpoints/x``),
        forcing conflicts: (status, body), 200 or 201 when applied; (0, b"") when unreachable."""
        request = urllib.request.Request(
            f"{self.server}{path}?fieldManager={field_manager}&force=true",
            data=json.dumps(obj).encode(),  # JSON is YAML
            method="PATCH",
            headers={"Content-Type": "application/apply-patch+yaml", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, context=self._ctx, timeout=10.0) as resp:
                return int(resp.status), bytes(resp.read())
        except urllib.error.HTTPError as e:
            with e:
                return int(e.code), bytes(e.read())
        except (OSError, http.client.HTTPException):
            return 0, b""

    def get_json(self, path: str) -> dict[str, object] | None:
        status, body = self.get(path)
        if status != 200:
            return None
        data = json.loads(body)
        return data if isinstance(data, dict) else None

    def ready(self) -> bool:
        status, body = self.get("/readyz")
        return status == 200 and body.strip() == b"ok" and self.get("/api/v1/namespaces/default")[0] == 200
