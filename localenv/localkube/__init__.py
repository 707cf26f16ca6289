"""A local Kubernetes cluster built from source, for development and end-to-end tests.

One module per component: ``pki`` (certificates), ``etcd``, ``apiserver``, ``controllers``
(controller-manager and scheduler), ``kwok`` (the fake node), ``node`` (the real node: containerd,
kubelet, kube-proxy and CoreDNS in a network namespace; its parts ``nodenet``, the namespace and the
bridges into it, ``nodecomponents``, its processes and their configs, ``nodehost``, what it changes
on the host, ``nodestate``, what it records; ``incluster``: what its pods get as in-cluster clients,
the kubernetes Service's endpoints and cluster DNS; ``dnsclient``, a DNS client to check that DNS
with; ``images``, the images it runs, built with ``buildah``, cached by ``imagecache`` as archives
of ``imagearchive``), plus what they share (``processes``, ``state``, ``kubeconfig``, ``bins``,
``common``). ``cluster.LocalCluster`` puts them together; ``cli`` is the
command line of ``localenv/localcluster.py``.
"""

from .apiserver import SERVICE_CIDR
from .bins import BIN_DIR_ENV, CNI_BIN_SUBDIR, REQUIRED_BINARIES, resolve_bin_dir
from .bins import CONTROL_PLANE as COMPONENTS
from .cluster import GATEWAY_API_GROUP, LocalCluster
from .common import DEFAULT_STATE_DIR, REPO_ROOT, ClusterError, KubectlError
from .kubeconfig import CLUSTER_NAME
from .kwok import (
    EXIT_CODE_ANNOTATION,
    KWOK_STAGE_DIRS,
    NODE_NAME,
    POD_CIDR,
    READY_DELAY_ANNOTATION,
    TERMINATION_MESSAGE_ANNOTATION,
)
from .node import REAL_NODE_LABEL, REAL_NODE_TAINT, RealNode, pod_placement

__all__ = [
    "BIN_DIR_ENV",
    "CLUSTER_NAME",
    "CNI_BIN_SUBDIR",
    "COMPONENTS",
    "DEFAULT_STATE_DIR",
    "EXIT_CODE_ANNOTATION",
    "GATEWAY_API_GROUP",
    "KWOK_STAGE_DIRS",
    "NODE_NAME",
    "POD_CIDR",
    "READY_DELAY_ANNOTATION",
    "REAL_NODE_LABEL",
    "REAL_NODE_TAINT",
    "REPO_ROOT",
    "REQUIRED_BINARIES",
    "SERVICE_CIDR",
    "TERMINATION_MESSAGE_ANNOTATION",
    "ClusterError",
    "KubectlError",
    "LocalCluster",
    "RealNode",
    "pod_placement",
    "resolve_bin_dir",
]
