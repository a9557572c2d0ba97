#!/usr/bin/env bash
# Installs holdfast on this node and proves it works.
#
#   sudo ./install.sh              build (release), then `holdfast install` puts the binary and
#                                  the conflist in place (atomically, after a self-check of the
#                                  binary, only what changed), create stateDir, then self-check:
#                                  a throwaway pod netns gets an address, is pinged, and is
#                                  deleted again.
#   sudo ./install.sh --uninstall  reverse all of it.
#
# Environment: CNI_BIN_DIR (/opt/cni/bin), CNI_CONF_DIR (/etc/cni/net.d),
# HOLDFAST_STATE_DIR (/var/lib/cni/holdfast), HOLDFAST_CONFLIST (conf/10-holdfast.conflist).
# Idempotent: running it twice leaves the same result. The files are written by the same code as
# the DaemonSet's init container (src/cli/install.rs): a conflist with a `kubernetes` section
# also gets the service account's CA and token and a kubeconfig naming them, when run in a pod.
set -euo pipefail
cd "$(dirname "$0")"

BIN_DIR=${CNI_BIN_DIR:-/opt/cni/bin}
CONF_DIR=${CNI_CONF_DIR:-/etc/cni/net.d}
STATE_DIR=${HOLDFAST_STATE_DIR:-/var/lib/cni/holdfast}
CONFLIST=${HOLDFAST_CONFLIST:-conf/10-holdfast.conflist}
CONF_DEST="$CONF_DIR/$(basename "$CONFLIST")"
KUBECONFIG_DEST="$CONF_DIR/holdfast-kubeconfig"

say() { echo "install.sh: $*"; }
die() { echo "install.sh: ERROR: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (sudo ./install.sh)"

uninstall() {
  # Routes between nodes, the VXLAN device and the masquerade tables, before the binary goes.
  if [ -x "$BIN_DIR/holdfast" ]; then "$BIN_DIR/holdfast" routes clear || say "routes clear reported problems (above)"; fi
  rm -f "$BIN_DIR/holdfast"
  # `holdfast install` wrote it (keeping an older cniVersion, so it may differ from $CONFLIST);
  # left behind without the binary it would name a plugin that is gone.
  if [ -f "$CONF_DEST" ] && grep -q '"type": *"holdfast"' "$CONF_DEST"; then rm -f "$CONF_DEST"; fi
  rm -f "$KUBECONFIG_DEST" "$CONF_DIR/holdfast-token" "$CONF_DIR/holdfast-ca.crt"
  if [ -d "$STATE_DIR/attachments" ] && [ -n "$(find "$STATE_DIR/attachments" -name '*.json' 2>/dev/null)" ]; then
    say "kept $STATE_DIR: pods still have attachments (delete them, then run --uninstall again)"
  else
    rm -rf "$STATE_DIR"
  fi
  say "uninstalled"
}

if [ "${1:-}" = "--uninstall" ]; then uninstall; exit 0; fi
[ $# -eq 0 ] || die "usage: $0 [--uninstall]"

# Runtime tools the self-check uses.
need=()
command -v ip >/dev/null || need+=(iproute2)
command -v ping >/dev/null || need+=(iputils-ping)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null || die "cargo not found: install Rust 1.85 or later (rustup), then rerun"

say "building (release, static)"
built=$(scripts/build-release.sh)
# build-release.sh names the binary under ./target; cargo honours CARGO_TARGET_DIR.
built="${CARGO_TARGET_DIR:-target}/${built#target/}"
"$built" install --binary "$built" --bin-dir "$BIN_DIR" --conf-dir "$CONF_DIR" --conflist "$CONFLIST" 2>&1 \
  | sed 's/^holdfast install: /install.sh: /' \
  || die "holdfast install failed"
install -d -m 0700 "$STATE_DIR"

# Self-check: the real binary, the real stateDir, this host's netns. A link-local /29 keeps it
# clear of any real network; everything made here is removed again, also on failure.
NS="holdfast-selfcheck-$$"
CID="holdfast-selfcheck-$$"
NET="holdfast-selfcheck"
fwd_before=$(cat /proc/sys/net/ipv4/ip_forward)
SELF_CONF=$(cat <<JSON
{"cniVersion":"1.1.0","name":"$NET","type":"holdfast","stateDir":"$STATE_DIR",
 "ipam":{"ranges":[[{"subnet":"169.254.233.0/29"}]]}}
JSON
)
cni() {
  echo "$SELF_CONF" | CNI_COMMAND=$1 CNI_CONTAINERID=$CID CNI_NETNS=/var/run/netns/$NS \
    CNI_IFNAME=eth0 CNI_PATH="$BIN_DIR" "$BIN_DIR/holdfast"
}
cleanup() {
  cni DEL >/dev/null 2>&1 || true
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$STATE_DIR/ipam/$NET" "$STATE_DIR/attachments/$NET"
  echo "$fwd_before" > /proc/sys/net/ipv4/ip_forward
}
trap cleanup EXIT
ip netns add "$NS"
result=$(cni ADD) || die "self-check ADD failed: $result"
addr=$(echo "$result" | sed -n 's/.*"address":"\([0-9.]*\)\/.*/\1/p')
[ -n "$addr" ] || die "self-check: no address in result: $result"
ping -c1 -W2 "$addr" >/dev/null || die "self-check: node cannot ping the pod at $addr"
ip netns exec "$NS" ping -c1 -W2 169.254.233.1 >/dev/null || die "self-check: pod cannot ping its gateway"
cni DEL >/dev/null || die "self-check DEL failed"
host_if=$(echo "$result" | sed -n 's/.*"name":"\(hf[0-9a-f]*\)".*/\1/p')
if [ -n "$host_if" ] && ip link show "$host_if" >/dev/null 2>&1; then die "self-check: $host_if survived DEL"; fi
say "self-check passed: pod got $addr, answered ping, and was deleted"
