#!/usr/bin/env bash
# A real two-node cluster on the current stack (tests/stack/build.sh: Kubernetes 1.36 with its
# etcd, containerd 2.x and the reference plugins 1.9.1 from Debian sid, Debian 12's runc) with
# holdfast installed by its DaemonSet and routing between the nodes itself; the incident's night
# replayed on one node, node-2 moved to another subnet, then the whole cluster's night.
# Everything runs in namespaces made here, never in the machine's root netns and never touching
# a machine-wide sysctl:
#   netns CP: etcd, kube-apiserver (10.44.0.5:6443, service VIP 10.43.0.1; the kubelets and
#     kube-proxies reach it at 10.44.0.6), controller-manager (allocates a /26 podCIDR per node
#     from 10.42.0.0/16), scheduler; bridges kbr0 (10.44.0.0/24) and
#     kbr1 (10.44.1.0/24) routed into each other, and no route to any pod CIDR;
#   node I (1, 2): its own netns (eth0 10.44.S.1I on kbrS), mount, UTS and PID namespace
#     (tests/kubernetes/node.sh): containerd, kubelet (config file), kube-proxy (iptables, serves
#     the VIP).
# Both nodes start on kbr0 (holdfast routes directly); node-2 later moves to kbr1 (VXLAN).
# conf/kubernetes/holdfast.yaml is applied as shipped with the image of scripts/build-image.sh;
# nothing is installed on the nodes by hand (they start with the reference plugins only).
# Every process is started and stopped by PID, also when the run fails (trap).
# Run as root; prints one line per check and "kubernetes e2e: N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
[ "$(id -u)" -eq 0 ] || { echo "kubernetes e2e: needs root"; exit 1; }
# Debian 12's runc and busybox; everything else is the current stack of tests/stack/build.sh.
# strace watches containerd run STATUS (status.sh); dash, curl, dig and OpenBSD's nc go into the
# conformance tests' tool image (images.sh).
for p in runc busybox-static iptables openssl strace bind9-dnsutils netcat-openbsd curl; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
    || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$p" >/dev/null
done
T_BUILD=$(date +%s)
SUITE=kubernetes
K=$(tests/stack/build.sh e2e) || { echo "$SUITE e2e: could not build the current stack"; exit 1; }
GINKGO=$K/ginkgo
PLUGINS=$(realpath "$K/../cni")
# etcd, containerd, its shim and ctr of the stack before anything of the machine's, here and in
# the nodes.
export PATH="$K:$PATH"
KVER=$("$K/kubectl" version --client -o json 2>/dev/null | grep -o '"gitVersion": *"v[^"]*"' | head -1 | grep -o '[0-9][0-9.]*')
TAG="kn$$"
W=$(mktemp -d "/tmp/$TAG.XXXX")
CGROOT=$(basename "$W")
CP="$TAG-cp"
mkdir -p "$W/images"
read -r _ IMAGE < <(scripts/build-image.sh "$W/images/holdfast.tar")
[ -s "$W/images/holdfast.tar" ] || { echo "kubernetes e2e: image build failed"; exit 1; }
tests/containerd/image.sh "$W/images/busybox.tar" docker.io/hf/busybox:e2e
tests/containerd/image.sh "$W/images/pause.tar" docker.io/hf/pause:e2e '["/bin/sleep","2147483647"]'
tests/kubernetes/images.sh "$W/images" "$K"
echo "$SUITE e2e: binaries, image and release build ready in $(( $(date +%s) - T_BUILD )) s"

pass=0; fail=0
ok()  { pass=$((pass+1)); echo "ok   - $*"; }
bad() { fail=$((fail+1)); echo "FAIL - $*"; }
PIDS=()
declare -A NODEPID=()
# TERM, then KILL after a deadline (kube-apiserver may linger after TERM).
stop_pid() {
  kill "$1" 2>/dev/null || return 0
  for _ in $(seq 1 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.2; done
  kill -KILL "$1" 2>/dev/null; wait "$1" 2>/dev/null
}
stop_node() { # I: the cold stop; every process of the node's PID namespace dies with it
  local p=${NODEPID[$1]:-}
  [ -n "$p" ] || return 0
  kill -KILL "$p" 2>/dev/null; wait "$p" 2>/dev/null
  NODEPID[$1]=""
  for _ in $(seq 1 50); do [ -z "$(pids_of_node "$1")" ] && break; sleep 0.1; done
}
cleanup() {
  set +e
  for i in 1 2; do stop_node "$i"; done
  for ((n=${#PIDS[@]}-1; n>=0; n--)); do stop_pid "${PIDS[$n]}"; done
  for i in 1 2; do ip netns del "$TAG-n$i" 2>/dev/null; done
  ip netns del "$CP" 2>/dev/null
  for d in /sys/fs/cgroup/*/"$CGROOT-n"[12]; do
    [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
  done
  if [ -n "${KEEP:-}" ]; then echo "kept $W"; else rm -rf "$W" 2>/dev/null || { sleep 1; rm -rf "$W"; }; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

in_cp() { nsenter --net="/var/run/netns/$CP" "$@"; }
kc() { in_cp "$K/kubectl" --kubeconfig="$W/admin.kubeconfig" "$@"; }
# Global PIDs of the processes in node I's PID namespace.
pids_of_node() {
  local f="$W/n$1/pidns"
  [ -f "$f" ] || return 0
  local ns; ns=$(cat "$f")
  for p in /proc/[0-9]*; do [ "$(readlink "$p/ns/pid" 2>/dev/null)" = "$ns" ] && echo "${p#/proc/}"; done
}
# ---------------------------------------------------------------------------------------------
source tests/kubernetes/cluster.sh
source tests/kubernetes/checks.sh
source tests/kubernetes/status.sh
source tests/kubernetes/drill.sh
source tests/kubernetes/night.sh
source tests/kubernetes/conformance.sh

T_UP=$(date +%s)
pki && control_plane || { bad "control plane did not come up"; echo "$SUITE e2e: $pass passed, $fail failed"; exit 1; }
ok "control plane up in netns $CP: etcd $(etcd --version | awk '/^etcd Version/ {print $3}'), kube-apiserver $KVER, controller-manager, scheduler"
grep -q "image: $IMAGE\$" conf/kubernetes/holdfast.yaml && ok "scripts/build-image.sh built $IMAGE, the image conf/kubernetes/holdfast.yaml names" \
  || bad "conf/kubernetes/holdfast.yaml does not name the image scripts/build-image.sh built ($IMAGE)"
for i in 1 2; do node_files "$i"; node_net "$i"; boot_node "$i"; done
# The phases in order. HF_K8S_PHASES (space-separated names) runs a subset while working on one
# of them: the install and pods phases are the cluster the others stand on.
ALL_PHASES="install routing pods status token drill move night conformance teardown"
phase() { # NAME FUNCTION [ARGS...]
  local name=$1; shift
  case " ${HF_K8S_PHASES:-$ALL_PHASES} " in *" $name "*) "$@";; esac
}
phase install checks_install
phase routing checks_routing direct
phase pods checks_pods
phase status checks_status
phase token token_stale
phase drill drill
phase token token_current
phase move checks_move
phase night night
phase conformance conformance
phase teardown checks_teardown
echo "$SUITE e2e: cluster run took $(( $(date +%s) - T_UP )) s"
echo "$SUITE e2e: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
