#!/usr/bin/env bash
# Installs the Debian packages the local cluster's real node and its image builds need (the Go
# parts are built by `localenv/build.sh node`). Idempotent: when every package is already
# installed it does nothing, otherwise it runs `apt-get update` once and installs what is missing.
# It installs packages only: it never changes the host's iptables rules, routes or links.
set -euo pipefail

# Why each one:
packages=(
  runc                  # the OCI runtime; Debian's is built with libseccomp, which the CRI's
                        # RuntimeDefault seccomp profile needs (a runc from Go source fails every pod)
  iptables              # kube-proxy's and the CNI portmap/bridge rules, inside the node's netns (nft backend)
  ipset                 # kube-router's NetworkPolicy controller (the real node's policy tests), same netns
  conntrack             # kube-proxy clears stale UDP conntrack entries with it
  socat                 # bridges the API server and MLflow into the node's network namespace
  iproute2              # ip netns / ip addr / ip route for the node's namespace
  util-linux            # nsenter --net (ip netns exec would remount /sys and hide the cgroups)
  mount                 # kubelet mounts tmpfs for Secret/projected volumes
  buildah               # builds the base, pause and serving images (vfs storage, chroot isolation)
  debootstrap           # the minimal Debian root filesystem of the base image
  debian-archive-keyring  # debootstrap verifies the mirror with it (only recommended, so listed)
  busybox-static        # the pod sandbox (pause) image: a static busybox running sleep
  ca-certificates       # pip inside image builds reaches the package index with the host's CA bundle
)

log() { printf '[localenv/node-packages] %s\n' "$*" >&2; }

missing=()
for p in "${packages[@]}"; do
  status="$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)"
  [ "$status" = installed ] || missing+=("$p")
done

if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    log "missing Debian packages: ${missing[*]}"
    log "installing them needs root: run 'sudo make node-packages' (or sudo $0)"
    exit 1
  fi
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y --no-install-recommends "${missing[@]}"
else
  log "all installed: ${packages[*]}"
fi

# Checks that need no root and change nothing: the runtime must carry seccomp, and iptables should be
# the nft backend (what the reference node ran with); a legacy alternative is reported, not changed.
runc_bin="$(command -v runc || echo /usr/sbin/runc)"
if ! "$runc_bin" --version | grep -q '^libseccomp:'; then
  log "runc at $runc_bin was built without seccomp; pods with RuntimeDefault seccomp would fail."
  log "Use Debian's runc (apt-get install --reinstall runc) and remove other runc binaries from PATH."
  exit 1
fi
ipt="$(command -v iptables || echo /usr/sbin/iptables)"
if ! "$ipt" --version | grep -q nf_tables; then
  log "warning: $("$ipt" --version) is not the nf_tables backend; select it with"
  log "  update-alternatives --set iptables /usr/sbin/iptables-nft"
fi
