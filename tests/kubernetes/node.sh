#!/usr/bin/env bash
# One Kubernetes node, run by tests/kubernetes/run.sh as PID 1 of its own PID namespace, inside
# the node's netns, a private mount namespace and a private UTS namespace:
#   nsenter --net=NETNS unshare -m -u -p --fork --kill-child --mount-proc --propagation private \
#     node.sh W I K8S_BIN NODE_IP [no-proxy]
# Killing the unshare process kills everything here at once (containerd, shims, pods): the
# cold reboot of the drill. The files of the node live under $W/nI and survive it, as a disk
# would; /run is emptied by the caller.
set -uo pipefail
W=$1; I=$2; K=$3; IP=$4; MODE=${5:-}
N="$W/n$I"
log() { echo "$(date +%T.%N | cut -c1-12) node-$I: $*" >> "$N/node.log"; }

hostname "node-$I"
mkdir -p "$N/manifests"
# The paths containerd, the kubelet and the CNI plugins hard-code, per node.
for m in /etc/cni/net.d:etc-cni /opt/cni/bin:opt-cni /var/lib/cni:var-lib-cni /run/containerd:run-containerd \
         /var/run/netns:netns /var/lib/kubelet:kubelet /var/log/pods:log-pods /var/log/containers:log-containers; do
  mkdir -p "${m%%:*}" "$N/${m##*:}" && mount --bind "$N/${m##*:}" "${m%%:*}" || { log "mount ${m%%:*} failed"; exit 1; }
done
# Machine-wide knobs the kubelet would write (setupKernelTunables): shadowed by plain files with
# the values it wants; --protect-kernel-defaults makes it only read them.
mkdir -p "$N/shadow"
for kv in vm/overcommit_memory=1 vm/panic_on_oom=0 kernel/panic=10 kernel/panic_on_oops=1 \
          kernel/keys/root_maxkeys=1000000 kernel/keys/root_maxbytes=25000000 \
          "net/netfilter/nf_conntrack_max=$(cat /proc/sys/net/netfilter/nf_conntrack_max 2>/dev/null || echo 262144)"; do
  f="/proc/sys/${kv%%=*}"; s="$N/shadow/$(echo "${kv%%=*}" | tr / _)"
  [ -e "$f" ] || continue
  echo "${kv#*=}" > "$s" && mount --bind "$s" "$f" || { log "shadow $f failed"; exit 1; }
done
if [ -e /sys/module/nf_conntrack/parameters/hashsize ]; then
  cat /sys/module/nf_conntrack/parameters/hashsize > "$N/shadow/hashsize"
  mount --bind "$N/shadow/hashsize" /sys/module/nf_conntrack/parameters/hashsize
fi

containerd --config "$N/containerd.toml" --log-level debug >> "$N/containerd.log" 2>&1 &
CTRD=$!
ctr() { command ctr -a "$N/containerd.sock" -n k8s.io "$@"; }
for _ in $(seq 1 100); do ctr version >/dev/null 2>&1 && break; sleep 0.1; done
ctr version >/dev/null 2>&1 || { log "containerd did not start"; exit 1; }
log "containerd up"
if [ ! -f "$N/images-imported" ]; then
  for t in "$W"/images/*.tar; do ctr images import "$t" >> "$N/node.log" 2>&1 || log "import $t failed"; done
  touch "$N/images-imported"
fi

if [ "$MODE" != no-proxy ]; then
  "$K/kube-proxy" --config="$N/kube-proxy.yaml" --v=1 >> "$N/kube-proxy.log" 2>&1 &
fi
date +%s.%N > "$N/kubelet.started"
log "kubelet starting"
# Everything but the node's identity is in the config file (tests/kubernetes/cluster.sh).
"$K/kubelet" --config="$N/kubelet.yaml" --kubeconfig="$N/kubelet.kubeconfig" --hostname-override="node-$I" \
  --node-ip="$IP" --address="$IP" --root-dir=/var/lib/kubelet --cert-dir=/var/lib/kubelet/pki --v=2 >> "$N/kubelet.log" 2>&1 &
# PID 1 of the namespace: when it returns, everything here is killed.
wait "$CTRD"
log "containerd exited"
