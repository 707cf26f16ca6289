"""The real node's own processes: containerd, kubelet, kube-proxy and CoreDNS, with their configs
and credentials, each started inside the node's namespace (nodenet.py) as one of its components.

Their files are in ``<state dir>/node/``: containerd's root (images, snapshots), kubelet's root dir,
pod logs, CNI config and IPAM data, configs and kubeconfigs; their sockets and containerd's state
are in the run dir (nodestate.py). The settings answer the pitfalls of
/work/shared/ref/real-node.md: kubelet accepting cgroup v1, with the cgroupfs driver, below the node's
cgroup root (nodehost.py), containerd clamping oom_score_adj and using Debian's runc (built with
libseccomp), a CNI bridge that masquerades nothing, kube-proxy in iptables mode that leaves the
machine's conntrack settings alone.

Cluster DNS: CoreDNS (localenv/go/coredns) inside the namespace on ``<node address>:53``, behind the
``kube-system/kube-dns`` Service (ClusterIP 10.0.0.10, kubelet's ``clusterDNS``, domain
cluster.local; incluster.py writes the Corefile and the objects); it answers ``cluster.local`` and
the reverse zones of the Service and pod ranges from the API server, NXDOMAIN for every other name
(nothing is forwarded). Pods that use no DNS are unaffected.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from . import incluster
from . import pki as pki_mod
from .apiserver import SERVICE_CIDR
from .bins import CNI_BIN_SUBDIR
from .kubeconfig import write_cert_kubeconfig
from .nodehost import hold_sysctls
from .nodenet import API_PORT_IN_NODE, NODE_GATEWAY, NODE_POD_CIDR, spawn_in_node
from .nodestate import NodeRecord
from .processes import Processes

#: Pods that should run on the real node select it by this label and tolerate this taint; every
#: other pod stays on the kwok node.
REAL_NODE_LABEL = ("aliasroll.io/node", "real")
REAL_NODE_TAINT = ("aliasroll.io/real-node", "true", "NoSchedule")
KUBELET_PORT = 10250
KUBE_PROXY_HEALTHZ_PORT = 10256


def containerd_socket(run_dir: Path) -> Path:
    return run_dir / "containerd.sock"


# ------------------------------------------------------------------------------------ configs (pure)


def containerd_config(
    *, node_dir: Path, run_dir: Path, socket: Path, bin_dir: Path, sandbox_image: str
) -> str:
    runtime = "plugins.'io.containerd.cri.v1.runtime'"
    return f"""version = 3
root = "{node_dir / "containerd"}"
state = "{run_dir / "containerd"}"
# Plugins that would write outside the node's directories, and ones this node does not use.
disabled_plugins = [
  "io.containerd.internal.v1.opt",
  "io.containerd.nri.v1.nri",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

# The transfer service (ctr images import) needs the verifier; its default dir is under /opt.
[plugins.'io.containerd.image-verifier.v1.bindir']
  bin_dir = "{node_dir / "image-verifiers"}"

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{sandbox_image}"

[{runtime}]
  # This VM forbids lowering oom_score_adj below 0, even for root: clamp instead of failing runc.
  restrict_oom_score_adj = true
  # Pod network namespaces below containerd's state dir, not in the host's /var/run/netns.
  netns_mounts_under_state_dir = true
  enable_cdi = false

[{runtime}.cni]
  bin_dirs = ["{bin_dir / CNI_BIN_SUBDIR}"]
  conf_dir = "{node_dir / "cni-conf"}"

[{runtime}.containerd]
  default_runtime_name = "runc"

[{runtime}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{runtime}.containerd.runtimes.runc.options]
  # Debian's runc: built with libseccomp, which the CRI's default seccomp profile needs.
  BinaryName = "{shutil.which("runc") or "runc"}"
  SystemdCgroup = false
"""


def cni_config(*, network: str, ipam_dir: Path) -> str:
    conf = {
        "cniVersion": "1.0.0",
        "name": network,
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                # Nothing leaves the namespace, so nothing to masquerade.
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": NODE_POD_CIDR, "gateway": NODE_GATEWAY}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(ipam_dir),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    return json.dumps(conf, indent=2) + "\n"


def kubelet_config(*, node_dir: Path, pki: Path, cgroup_root: str, socket: Path) -> str:
    taint_key, taint_value, effect = REAL_NODE_TAINT
    return f"""apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# Hybrid cgroups (v1 controllers) and no systemd on this machine kind.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: {cgroup_root}
containerRuntimeEndpoint: unix://{socket}
address: 0.0.0.0
port: {KUBELET_PORT}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: {pki / "kubelet-serving.crt"}
tlsPrivateKeyFile: {pki / "kubelet-serving.key"}
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {pki / "ca.crt"}
authorization:
  mode: Webhook
registerWithTaints:
- key: {taint_key}
  value: "{taint_value}"
  effect: {effect}
podLogsDir: {node_dir / "pod-logs"}
volumePluginDir: {node_dir / "volume-plugins"}
failSwapOn: false
# A development machine's disk may be fuller than a server's: never evict for it.
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%"
  nodefs.inodesFree: "1%"
  imagefs.available: "1%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
maxPods: 60
# Pods with dnsPolicy Default (and the search line of ClusterFirst ones) take the host's file.
resolvConf: /etc/resolv.conf
clusterDomain: {incluster.CLUSTER_DOMAIN}
clusterDNS:
- {incluster.DNS_SERVICE_IP}
"""


def kube_proxy_config(*, node_dir: Path, name: str, address: str) -> str:
    return f"""apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {node_dir / "kube-proxy.kubeconfig"}
mode: iptables
hostnameOverride: {name}
bindAddress: {address}
healthzBindAddress: 127.0.0.1:{KUBE_PROXY_HEALTHZ_PORT}
metricsBindAddress: 127.0.0.1:10249
clusterCIDR: {NODE_POD_CIDR}
nodePortAddresses: ["{address}/32"]
# 0: leave the machine-wide conntrack settings as they are.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
"""


# ------------------------------------------------------------------------------------ starting them


class Components:
    """Starts the node's processes inside its namespace, each recorded first (nodestate.py), with
    their files below ``node_dir``."""

    def __init__(self, procs: Processes, record: NodeRecord, node_dir: Path) -> None:
        self._procs = procs
        self._record = record
        self.dir = node_dir

    @property
    def containerd_socket(self) -> Path:
        return containerd_socket(self._record.run_dir)

    def make_credentials(self, pki: Path, *, name: str, address: str) -> None:
        """Client certificates and kubeconfigs (the API server through the bridge at 127.0.0.1) for
        kubelet, kube-proxy and CoreDNS, and kubelet's serving certificate."""
        server = f"https://127.0.0.1:{API_PORT_IN_NODE}"
        ca = pki / "ca.crt"
        cert, key = pki_mod.issue(
            pki, "kubelet", subject=f"/O=system:nodes/CN=system:node:{name}", client=True
        )
        write_cert_kubeconfig(
            self.dir / "kubelet.kubeconfig", server=server, ca=ca, cert=cert, key=key, user="kubelet"
        )
        pki_mod.issue(pki, "kubelet-serving", subject=f"/CN={name}", server_sans=(f"IP:{address}",))
        cert, key = pki_mod.issue(pki, "kube-proxy", subject="/CN=system:kube-proxy", client=True)
        write_cert_kubeconfig(
            self.dir / "kube-proxy.kubeconfig", server=server, ca=ca, cert=cert, key=key, user="kube-proxy"
        )
        # CoreDNS: a user of its own, whose ClusterRole (incluster.coredns_rbac) lets it only list
        # and watch Services, EndpointSlices and Namespaces; not the admin certificate.
        cert, key = pki_mod.issue(pki, "coredns", subject=f"/CN={incluster.COREDNS_USER}", client=True)
        write_cert_kubeconfig(
            self.dir / "coredns.kubeconfig", server=server, ca=ca, cert=cert, key=key, user="coredns"
        )

    def start_containerd(self, bin_dir: Path, *, sandbox_image: str) -> None:
        d = self.dir
        config = d / "containerd.toml"
        config.write_text(
            containerd_config(
                node_dir=d,
                run_dir=self._record.run_dir,
                socket=self.containerd_socket,
                bin_dir=bin_dir,
                sandbox_image=sandbox_image,
            )
        )
        (d / "cni-conf").mkdir(parents=True, exist_ok=True)
        (d / "cni-conf" / "10-aliasroll.conflist").write_text(
            cni_config(network=self._record.fact("cni_network"), ipam_dir=d / "cni-ipam")
        )
        spawn_in_node(
            self._procs,
            self._record,
            "containerd",
            [str(bin_dir / "containerd"), f"--config={config}"],
            exe="containerd",
            # containerd finds its shim on PATH.
            env={"PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"},
        )

    def containerd_ready(self) -> bool:
        if not self.containerd_socket.exists():
            return False
        result = subprocess.run(
            [str(self._record.bin_dir / "ctr"), f"--address={self.containerd_socket}", "version"],
            capture_output=True,
            timeout=10,
            check=False,
        )
        return result.returncode == 0

    def start_kubelet(self, bin_dir: Path, pki: Path, *, name: str, address: str) -> None:
        d = self.dir
        label_key, label_value = REAL_NODE_LABEL
        config = kubelet_config(
            node_dir=d, pki=pki, cgroup_root=self._record.fact("cgroup_root"), socket=self.containerd_socket
        )
        (d / "kubelet.yaml").write_text(config)
        hold_sysctls(self._record)
        spawn_in_node(
            self._procs,
            self._record,
            "kubelet",
            [
                str(bin_dir / "kubelet"),
                f"--config={d / 'kubelet.yaml'}",
                f"--kubeconfig={d / 'kubelet.kubeconfig'}",
                f"--root-dir={d / 'kubelet'}",
                f"--cert-dir={d / 'kubelet' / 'pki'}",
                f"--hostname-override={name}",
                f"--node-ip={address}",
                f"--node-labels={label_key}={label_value}",
                "--v=1",
            ],
            exe="kubelet",
        )

    def start_kube_proxy(self, bin_dir: Path, *, name: str, address: str) -> None:
        d = self.dir
        (d / "kube-proxy.yaml").write_text(kube_proxy_config(node_dir=d, name=name, address=address))
        spawn_in_node(
            self._procs,
            self._record,
            "kube-proxy",
            [str(bin_dir / "kube-proxy"), f"--config={d / 'kube-proxy.yaml'}", "--v=1"],
            exe="kube-proxy",
        )

    def start_coredns(self, bin_dir: Path, *, address: str) -> None:
        """CoreDNS on the node's address, reading the API server through the bridge at 127.0.0.1."""
        corefile = self.dir / "Corefile"
        corefile.write_text(
            incluster.corefile(
                listen=address,
                kubeconfig=self.dir / "coredns.kubeconfig",
                reverse_cidrs=(SERVICE_CIDR, NODE_POD_CIDR),
            )
        )
        spawn_in_node(
            self._procs,
            self._record,
            "coredns",
            [str(bin_dir / "coredns"), "-conf", str(corefile)],
            exe="coredns",
        )
