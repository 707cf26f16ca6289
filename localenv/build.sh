#!/usr/bin/env bash
# Builds the local cluster's binaries from source and caches them outside the clone, keyed on the
# pinned go.mod/go.sum of each wrapper module under localenv/go/. A warm cache makes this a no-op,
# so a fresh clone in CI reuses the binaries of earlier runs on the same machine.
#
#   localenv/build.sh [control-plane]  etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
#                                      kubectl, kwok, hey (what `make test` needs)
#   localenv/build.sh node             the real node: containerd, containerd-shim-runc-v2, ctr,
#                                      kubelet, kube-proxy, coredns (cluster DNS), and the CNI
#                                      plugins in cni-bin/
#   localenv/build.sh prometheus       the Prometheus server the canary analysis tests query
#                                      (API only: no web UI; static, file and http discovery only)
#   localenv/build.sh all              control plane and node (what the local cluster runs)
#   localenv/build.sh network-policy   opt-in: kube-router, of which the real node's NetworkPolicy
#                                      tests run only the policy controller (localkube/netpol.py)
#
# Prints the directory holding the binaries (one cache directory per group, all linked into one
# bin/current/). runc, iptables and the other node tools are Debian packages: localenv/node-packages.sh.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_root="${ALIASROLL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/aliasroll}"

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-modcacherw -mod=readonly"
# go.sum is committed, so every download is verified against it; the checksum database is not
# reachable from every machine this runs on and adds nothing over go.sum.
export GOSUMDB=off

key_of() { cat "$here/go/$1/go.mod" "$here/go/$1/go.sum" | sha256sum | cut -c1-12; }

log() { printf '[localenv/build] %s\n' "$*" >&2; }

# build GROUP MODULE "binaries..." "packages..." [LDFLAGS] [TAGS] [LINK_DIR]
# GROUP names the cache directory, MODULE the wrapper module under localenv/go/ it is built from
# (one module can feed several groups, so the node's kubelet does not invalidate the cached
# control plane). With LINK_DIR the whole group is linked as current/LINK_DIR (a plugin directory)
# instead of one link per binary.
build() {
  local group=$1 module=$2 bins=$3 pkgs=$4 ldflags=${5:-} tags=${6:-} link_dir=${7:-}
  local out="$cache_root/bin/$group-$(key_of "$module")"
  local missing=0
  for b in $bins; do [ -x "$out/$b" ] || missing=1; done
  if [ "$missing" = 0 ]; then
    log "$group: cached in $out"
  else
    log "$group: building $bins from source (first build: minutes to tens of minutes on 2 cores; later runs reuse $out)"
    local started=$SECONDS tmp="$out.tmp.$$"
    mkdir -p "$tmp"
    local flags=(-trimpath -buildvcs=false -ldflags "-s -w $ldflags")
    if [ -n "$tags" ]; then flags+=(-tags "$tags"); fi
    # A single package is built to the binary's own name (etcd's main package is named "server").
    local dest="$tmp/"
    if [ "$(echo $bins | wc -w)" = 1 ]; then dest="$tmp/$bins"; fi
    if ! (cd "$here/go/$module" && go build "${flags[@]}" -o "$dest" $pkgs); then
      rm -rf "$tmp"
      log "$group: build failed (module localenv/go/$module)"
      exit 1
    fi
    rm -rf "$out" && mv "$tmp" "$out"
    log "$group: built in $((SECONDS - started)) s"
  fi
  mkdir -p "$cache_root/bin/current"
  if [ -n "$link_dir" ]; then
    ln -sfn "$out" "$cache_root/bin/current/$link_dir"
  else
    for b in $bins; do ln -sfn "$out/$b" "$cache_root/bin/current/$b"; done
  fi
}

# Version stamping of Kubernetes binaries (otherwise they report v0.0.0), from a wrapper module's pin.
kube_ldflags() {
  local version major_minor major minor flags="" pkg
  version="$(awk '/^require k8s.io\/kubernetes/ {print $3}' "$here/go/$1/go.mod")"
  major_minor="${version#v}"; major="${major_minor%%.*}"; minor="${major_minor#*.}"; minor="${minor%%.*}"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    flags+=" -X $pkg.gitTreeState=clean -X $pkg.gitCommit=release-$version"
  done
  echo "$flags"
}

control_plane() {
  build etcd etcd "etcd" "go.etcd.io/etcd/server/v3"
  build hey hey "hey" "github.com/rakyll/hey"  # the serving benchmark's load generator
  build kwok kwok "kwok" "sigs.k8s.io/kwok/cmd/kwok"
  # One go build for the four Kubernetes commands, so they share compiled packages.
  build kube kube "kube-apiserver kube-controller-manager kube-scheduler kubectl" \
    "k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl" \
    "$(kube_ldflags kube)"

  # Data the cluster needs from the pinned modules: kwok's stage configs and the Gateway API CRDs.
  (cd "$here/go/kwok" && go mod download sigs.k8s.io/kwok)
  (cd "$here/go/gateway-api" && go mod download sigs.k8s.io/gateway-api)
  local kwok_dir gw_dir
  kwok_dir="$(cd "$here/go/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)"
  gw_dir="$(cd "$here/go/gateway-api" && go list -m -f '{{.Dir}}' sigs.k8s.io/gateway-api)"
  ln -sfn "$kwok_dir/kustomize/stage" "$cache_root/bin/current/kwok-stages"
  ln -sfn "$gw_dir/config/crd/standard" "$cache_root/bin/current/gateway-api-crds"
}

node() {
  # containerd with CGO off: the btrfs snapshotter needs cgo, and devmapper/zfs/aufs are not used
  # by the node (overlayfs or native snapshots); urfave_cli_no_docs as in containerd's own Makefile.
  local containerd_version
  containerd_version="$(awk '/^require github.com\/containerd\/containerd\/v2/ {print $3}' "$here/go/containerd/go.mod")"
  build containerd containerd "containerd containerd-shim-runc-v2 ctr" \
    "github.com/containerd/containerd/v2/cmd/containerd github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 github.com/containerd/containerd/v2/cmd/ctr" \
    "-X github.com/containerd/containerd/v2/version.Version=$containerd_version" \
    "no_btrfs no_devmapper no_zfs no_aufs urfave_cli_no_docs"
  # The CNI plugins kubelet/containerd look up in one plugin directory: current/cni-bin/.
  local cni_version
  cni_version="$(awk '/^require github.com\/containernetworking\/plugins/ {print $3}' "$here/go/cni/go.mod")"
  build cni cni "bridge host-local loopback portmap" \
    "github.com/containernetworking/plugins/plugins/main/bridge github.com/containernetworking/plugins/plugins/ipam/host-local github.com/containernetworking/plugins/plugins/main/loopback github.com/containernetworking/plugins/plugins/meta/portmap" \
    "-X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$cni_version" \
    "" cni-bin
  # kubelet and kube-proxy: the control plane's Kubernetes (kube-node pins the same version and
  # replaces as kube; tests/unit/localenv/test_build_pins.py checks), in a group of its own so the cached
  # control plane stays valid. Shared packages come from Go's build cache.
  build kube-node kube-node "kubelet kube-proxy" \
    "k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy" \
    "$(kube_ldflags kube-node)"
  # Cluster DNS for the node's pods: CoreDNS with only the plugins its Corefile uses (the wrapper
  # module's own main package). Its version is a constant of the module; the commit it reports is not.
  local coredns_version
  coredns_version="$(awk '/^require github.com\/coredns\/coredns/ {print $3}' "$here/go/coredns/go.mod")"
  build coredns coredns "coredns" "aliasroll.io/cluster/coredns" \
    "-X github.com/coredns/coredns/coremain.GitCommit=release-$coredns_version"
}

prometheus() {
  # Prometheus 3.x is published as Go module v0.3MM.P for release 3.MM.P. No builtinassets tag: the
  # UI would be read from web/ui/static beside the working directory (absent; the API needs none),
  # which saves building it with npm. remove_all_sd keeps only the file, http and static
  # service discovery, leaving out the cloud SDKs (most of the build).
  local module_version release
  module_version="$(awk '/^require github.com\/prometheus\/prometheus/ {print $3}' "$here/go/prometheus/go.mod")"
  release="$(echo "$module_version" | sed -E 's/^v0\.3([0-9]{2})\.([0-9]+)$/3.\1.\2/; s/^3\.0/3./')"
  build prometheus prometheus "prometheus" "github.com/prometheus/prometheus/cmd/prometheus" \
    "-X github.com/prometheus/common/version.Version=$release -X github.com/prometheus/common/version.Revision=$module_version -X github.com/prometheus/common/version.Branch=release -X github.com/prometheus/common/version.BuildUser=aliasroll" \
    "remove_all_sd"
}

network_policy() {
  # kube-router v2 (the Go module proxy serves v2.1.0 only) for its network policy controller:
  # NetworkPolicy enforcement on the real node, with iptables and ipset inside its namespace.
  local kube_router_version
  kube_router_version="$(awk '/^require github.com\/cloudnativelabs\/kube-router\/v2/ {print $3}' "$here/go/kube-router/go.mod")"
  build kube-router kube-router "kube-router" "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router" \
    "-X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=$kube_router_version"
}

case "${1:-control-plane}" in
  control-plane) control_plane ;;
  node) node ;;
  prometheus) prometheus ;;
  all) control_plane; node ;;
  network-policy) network_policy ;;
  *) echo "usage: $0 [control-plane|node|prometheus|all|network-policy]" >&2; exit 2 ;;
esac

echo "$cache_root/bin/current"
