"""The command line of ``localenv/localcluster.py``."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence

from .cluster import LocalCluster
from .common import CLI_PATH, DEFAULT_STATE_DIR, ClusterError, KubectlError
from .node import DEFAULT_IMAGES


def _print_usage(cluster: LocalCluster) -> None:
    print(f"kubeconfig: {cluster.kubeconfig}")
    print(f"server:     {cluster.server}")
    if cluster.has_real_node:
        node = cluster.node
        print(f"real node:  {node.name} at {node.address}, network namespace {node.netns}")
        print(f"  run a command inside it: nsenter --net={node.netns_path} COMMAND")
    print("use it with:")
    print(f"  export KUBECONFIG={cluster.kubeconfig}")
    print(f"  export PATH={cluster.bin_dir}:$PATH   # the built kubectl")
    print("  kubectl get nodes")
    print(
        f"stop it with: python {CLI_PATH} down"
        + ("" if cluster.state_dir == DEFAULT_STATE_DIR else f" --dir {cluster.state_dir}")
    )


def _cmd_up(cluster: LocalCluster) -> int:
    if cluster.is_running():
        print(f"already running (state in {cluster.state_dir})")
        print(f"kubeconfig: {cluster.kubeconfig}")
        return 0
    cluster.start()
    if cluster.images_seconds is not None:
        print(f"real node's images ready in {cluster.images_seconds:.1f} s")
    print(f"cluster up in {cluster.startup_seconds:.1f} s (state in {cluster.state_dir})")
    print("  " + ", ".join(f"{what} at {t:.1f} s" for what, t in cluster.phase_seconds.items()))
    _print_usage(cluster)
    return 0


def _cmd_down(cluster: LocalCluster) -> int:
    if not cluster.state_dir.exists():
        print(f"no cluster in {cluster.state_dir}")
        return 0
    t = time.monotonic()
    cluster.stop()
    if cluster.state_dir.exists():
        print(f"{cluster.state_dir} was not made by localcluster.py: stopped nothing, removed nothing")
        return 1
    print(f"stopped and removed {cluster.state_dir} in {time.monotonic() - t:.1f} s")
    return 0


def _cmd_status(cluster: LocalCluster) -> int:
    if not cluster.state_dir.exists():
        print(f"not running (no state in {cluster.state_dir})")
        return 1
    pids = cluster.component_status()
    running = cluster.is_running()
    print(f"{'running' if running else 'NOT healthy'} (state in {cluster.state_dir})")
    for component, pid in pids.items():
        print(f"  {component:24} {'pid ' + str(pid) if pid else 'not running'}")
    if running:
        print(f"kubeconfig: {cluster.kubeconfig}")
        print(f"server:     {cluster.server}")
        if cluster.has_real_node:
            print(f"real node:  {cluster.node.name} at {cluster.node.address} (netns {cluster.node.netns})")
    else:
        print(f"logs in {cluster.logs_dir}; restart with `up` (it cleans up) or remove with `down`")
    return 0 if running else 1


def _require_running(cluster: LocalCluster) -> None:
    if not cluster.is_running():
        raise ClusterError(f"no healthy cluster in {cluster.state_dir}; run `up` first")


def _cmd_selftest(cluster: LocalCluster) -> int:
    _require_running(cluster)
    timings = cluster.selftest()
    print(
        f"selftest passed: 2/2 replicas Available after {timings['available']:.1f} s; "
        f"pods garbage-collected {timings['garbage_collected']:.1f} s after deleting the Deployment"
    )
    return 0


def _cmd_gateway_crds(cluster: LocalCluster) -> int:
    _require_running(cluster)
    t = time.monotonic()
    cluster.install_gateway_api_crds()
    print(f"Gateway API standard CRDs installed and served in {time.monotonic() - t:.1f} s")
    return 0


def _cmd_kubectl_path(cluster: LocalCluster) -> int:
    print(cluster.bin_dir / "kubectl")
    return 0


def main(argv: Sequence[str] | None = None, *, description: str | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--dir", type= __import__("pathlib").Path, default=DEFAULT_STATE_DIR,
        help=f"state dir (default: {DEFAULT_STATE_DIR})",
    )  # fmt: skip
    parser = argparse.ArgumentParser(description=description)
    sub = parser.add_subparsers(dest="command", required=True)
    commands: dict[str, Callable[[LocalCluster], int]] = {
        "up": _cmd_up,
        "down": _cmd_down,
        "status": _cmd_status,
        "selftest": _cmd_selftest,
        "gateway-crds": _cmd_gateway_crds,
        "kubectl-path": _cmd_kubectl_path,
    }
    helps = {
        "up": "start the cluster in the background and wait until it is ready",
        "down": "stop the cluster and remove its state dir",
        "status": "report whether the cluster runs (exit code 0) or not (1)",
        "selftest": "prove that a Deployment becomes Available and is garbage-collected",
        "gateway-crds": "install the Gateway API standard CRDs",
        "kubectl-path": "print the path of the built kubectl (builds it first if needed; no cluster needed)",
    }
    for name in commands:
        p = sub.add_parser(name, parents=[common], help=helps[name])
        if name == "up":
            p.add_argument(
                "--real-node",
                action="store_true",
                help="also start a real node (containerd, kubelet, kube-proxy in a network namespace; root)",
            )
            p.add_argument(
                "--node-images",
                default=",".join(DEFAULT_IMAGES),
                help="images to build and load into the real node, comma-separated (default: %(default)s)",
            )
    args = parser.parse_args(argv)
    images = [n.strip() for n in str(getattr(args, "node_images", "")).split(",") if n.strip()]
    cluster = LocalCluster(
        args.dir,
        real_node=bool(getattr(args, "real_node", False)),
        node_images=images or DEFAULT_IMAGES,
    )
    try:
        return commands[args.command](cluster)
    except (ClusterError, KubectlError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted (whatever was started has been stopped)", file=sys.stderr)
        return 130
