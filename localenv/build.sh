#!/usr/bin/env bash
# Builds the local control plane from source (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, kwok) and caches the binaries outside the clone, keyed on the pinned
# go.mod/go.sum of each wrapper module under localenv/go/. A warm cache makes this a no-op, so a
# fresh clone in CI reuses the binaries of earlier runs on the same machine.
#
# Prints the directory holding the binaries (one per component group, all linked into bin/).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_root="${ALIASROLL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/aliasroll}"
kube_version="$(awk '/^require k8s.io\/kubernetes/ {print $3}' "$here/go/kube/go.mod")"

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-modcacherw -mod=readonly"
# go.sum is committed, so every download is verified against it; the checksum database is not
# reachable from every machine this runs on and adds nothing over go.sum.
export GOSUMDB=off

key_of() { cat "$here/go/$1/go.mod" "$here/go/$1/go.sum" | sha256sum | cut -c1-12; }

log() { printf '[localenv/build] %s\n' "$*" >&2; }

# build GROUP "binaries..." "packages..." [ldflags]
build() {
  local group=$1 bins=$2 pkgs=$3 ldflags=${4:-}
  local out="$cache_root/bin/$group-$(key_of "$group")"
  local missing=0
  for b in $bins; do [ -x "$out/$b" ] || missing=1; done
  if [ "$missing" = 0 ]; then
    log "$group: cached in $out"
  else
    log "$group: building $bins from source (first build: tens of minutes on 2 cores; later runs reuse $out)"
    local started=$SECONDS tmp="$out.tmp.$$"
    mkdir -p "$tmp"
    if [ "$(echo $bins | wc -w)" = 1 ]; then
      # A single package is built to the binary's own name (etcd's main package is named "server").
      (cd "$here/go/$group" && go build -trimpath -buildvcs=false -ldflags "-s -w $ldflags" -o "$tmp/$bins" $pkgs)
    else
      (cd "$here/go/$group" && go build -trimpath -buildvcs=false -ldflags "-s -w $ldflags" -o "$tmp/" $pkgs)
    fi
    rm -rf "$out" && mv "$tmp" "$out"
    log "$group: built in $((SECONDS - started)) s"
  fi
  mkdir -p "$cache_root/bin/current"
  for b in $bins; do ln -sfn "$out/$b" "$cache_root/bin/current/$b"; done
}

kube_ldflags=""
major_minor="${kube_version#v}"; major="${major_minor%%.*}"; minor="${major_minor#*.}"; minor="${minor%%.*}"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  kube_ldflags+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
  kube_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.gitCommit=release-$kube_version"
done

build etcd "etcd" "go.etcd.io/etcd/server/v3"
build hey "hey" "github.com/rakyll/hey"  # the serving benchmark's load generator
build kwok "kwok" "sigs.k8s.io/kwok/cmd/kwok"
# One go build for the four Kubernetes commands, so they share compiled packages.
build kube "kube-apiserver kube-controller-manager kube-scheduler kubectl" \
  "k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl" \
  "$kube_ldflags"

# Data the cluster needs from the pinned modules: kwok's stage configs and the Gateway API CRDs.
(cd "$here/go/kwok" && go mod download sigs.k8s.io/kwok)
(cd "$here/go/gateway-api" && go mod download sigs.k8s.io/gateway-api)
kwok_dir="$(cd "$here/go/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)"
gw_dir="$(cd "$here/go/gateway-api" && go list -m -f '{{.Dir}}' sigs.k8s.io/gateway-api)"
ln -sfn "$kwok_dir/kustomize/stage" "$cache_root/bin/current/kwok-stages"
ln -sfn "$gw_dir/config/crd/standard" "$cache_root/bin/current/gateway-api-crds"

echo "$cache_root/bin/current"
