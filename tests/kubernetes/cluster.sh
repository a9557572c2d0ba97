# Sourced by tests/kubernetes/run.sh: the control plane and the nodes (flags as measured in
# ../shared/findings/kubernetes-node.md).

# A CA, the apiserver's serving certificate (VIP, real address, kubernetes.default names), the
# service-account key pair, a token per component.
pki() {
  local d="$W/pki"; mkdir -p "$d"
  (
    cd "$d" || exit 1
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=kn-e2e-ca -keyout ca.key -out ca.crt 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver -keyout apiserver.key -out apiserver.csr 2>/dev/null
    printf 'subjectAltName=IP:10.43.0.1,IP:10.44.0.5,IP:10.44.0.6,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n' > san.ext
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile san.ext -out apiserver.crt 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null && openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  ) || return 1
  tok() { head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
  ADMIN=$(tok); KCM=$(tok); SCHED=$(tok); PROXY=$(tok); NODE1=$(tok); NODE2=$(tok)
  cat > "$d/tokens.csv" <<CSV
$ADMIN,admin,1,system:masters
$KCM,system:kube-controller-manager,2,system:masters
$SCHED,system:kube-scheduler,3,system:masters
$PROXY,system:kube-proxy,4,
$NODE1,system:node:node-1,5,system:nodes
$NODE2,system:node:node-2,6,system:nodes
CSV
  kubeconfig "$W/admin.kubeconfig" "$ADMIN"
  kubeconfig "$W/kcm.kubeconfig" "$KCM"
  kubeconfig "$W/scheduler.kubeconfig" "$SCHED"
  : > "$W/resolv.conf"
}
kubeconfig() { # FILE TOKEN [ADDRESS]: the apiserver by its real address (10.44.0.5 unless given)
  cat > "$1" <<KC
apiVersion: v1
kind: Config
clusters: [{name: kn, cluster: {server: "https://${3:-10.44.0.5}:6443", certificate-authority: "$W/pki/ca.crt"}}]
users: [{name: u, user: {token: "$2"}}]
contexts: [{name: c, context: {cluster: kn, user: u}}]
current-context: c
KC
}

# Started with nsenter directly (not through a function), so $! is the server itself.
control_plane() {
  ip netns add "$CP" || return 1
  ip -n "$CP" link set lo up
  # Two node segments: kbr0 (10.44.0.0/24, the apiserver's) and kbr1 (10.44.1.0/24), routed
  # into each other here and nowhere else. The control plane routes no pod CIDR: reaching another
  # node's pods is holdfast's job (direct on one segment, VXLAN across the two).
  local s
  for s in 0 1; do
    ip -n "$CP" link add "kbr$s" type bridge
    ip -n "$CP" addr add "10.44.$s.5/24" dev "kbr$s"
    ip -n "$CP" link set "kbr$s" up
  done
  # The kubelets' and kube-proxies' own path to the apiserver (as RKE2's local load balancer
  # gives them one): black-holing the VIP and 10.44.0.5 on a node cuts holdfast alone.
  ip -n "$CP" addr add 10.44.0.6/24 dev kbr0
  in_cp sysctl -qw net.ipv4.ip_forward=1
  local P="$W/pki"
  nsenter --net="/var/run/netns/$CP" etcd --data-dir "$W/etcd" --listen-client-urls http://127.0.0.1:2379 \
    --advertise-client-urls http://127.0.0.1:2379 --listen-peer-urls http://127.0.0.1:2380 \
    --initial-advertise-peer-urls http://127.0.0.1:2380 --initial-cluster default=http://127.0.0.1:2380 \
    >"$W/etcd.log" 2>&1 &
  PIDS+=($!)
  nsenter --net="/var/run/netns/$CP" "$K/kube-apiserver" --etcd-servers=http://127.0.0.1:2379 --secure-port=6443 --bind-address=0.0.0.0 \
    --advertise-address=10.44.0.5 --tls-cert-file="$P/apiserver.crt" \
    --tls-private-key-file="$P/apiserver.key" --client-ca-file="$P/ca.crt" --token-auth-file="$P/tokens.csv" \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --service-account-key-file="$P/sa.pub" --service-account-signing-key-file="$P/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local --service-cluster-ip-range=10.43.0.0/16 \
    --allow-privileged=true --kubelet-preferred-address-types=InternalIP --profiling=false --v=1 \
    >"$W/apiserver.log" 2>&1 &
  PIDS+=($!)
  local up=""
  for _ in $(seq 1 240); do
    kc get --raw /readyz >/dev/null 2>&1 && { up=1; break; }
    sleep 0.5
  done
  [ -n "$up" ] || { tail -20 "$W/apiserver.log"; return 1; }
  nsenter --net="/var/run/netns/$CP" "$K/kube-controller-manager" --kubeconfig="$W/kcm.kubeconfig" --authentication-kubeconfig="$W/kcm.kubeconfig" \
    --authorization-kubeconfig="$W/kcm.kubeconfig" --leader-elect=false --bind-address=127.0.0.1 \
    --secure-port=10257 --cert-dir="$W/kcm-certs" --allocate-node-cidrs=true --cluster-cidr=10.42.0.0/16 \
    --node-cidr-mask-size=26 --service-cluster-ip-range=10.43.0.0/16 --service-account-private-key-file="$P/sa.key" \
    --root-ca-file="$P/ca.crt" --cluster-signing-cert-file="$P/ca.crt" --cluster-signing-key-file="$P/ca.key" \
    --use-service-account-credentials=false --v=1 >"$W/kcm.log" 2>&1 &
  PIDS+=($!)
  nsenter --net="/var/run/netns/$CP" "$K/kube-scheduler" --kubeconfig="$W/scheduler.kubeconfig" --authentication-kubeconfig="$W/scheduler.kubeconfig" \
    --authorization-kubeconfig="$W/scheduler.kubeconfig" --leader-elect=false --bind-address=127.0.0.1 \
    --secure-port=10259 --cert-dir="$W/sched-certs" --v=2 >"$W/scheduler.log" 2>&1 &
  PIDS+=($!)
}

# Node I's files: containerd and kubelet configs, kubeconfigs, the reference plugins of the stack
# (no holdfast: the DaemonSet installs it; no portmap: the shipped conflist does hostPorts with
# holdfast alone, and a node without portmap shows it).
node_files() {
  local i=$1 N="$W/n$1"
  mkdir -p "$N"/{opt-cni,etc-cni,containerd/root,containerd/opt,volume-plugins}
  cp "$PLUGINS"/{loopback,host-local,bandwidth} "$N/opt-cni/"
  node_runtime_files "$i"
  local tok; tok=$([ "$i" = 1 ] && echo "$NODE1" || echo "$NODE2")
  kubeconfig "$N/kubelet.kubeconfig" "$tok" 10.44.0.6
  kubeconfig "$N/kube-proxy.kubeconfig" "$PROXY" 10.44.0.6
  # The node's cgroup root, on this cgroup-v1 machine, in every hierarchy.
  for h in /sys/fs/cgroup/*/; do
    [ -L "${h%/}" ] && continue
    mkdir -p "$h$CGROOT-n$i"
  done
  cat /sys/fs/cgroup/cpuset/cpuset.cpus > "/sys/fs/cgroup/cpuset/$CGROOT-n$i/cpuset.cpus"
  cat /sys/fs/cgroup/cpuset/cpuset.mems > "/sys/fs/cgroup/cpuset/$CGROOT-n$i/cpuset.mems"
}

# Node I's segment (0 or 1; SEG_I, default 0) and address on it.
node_seg() { local v="SEG_$1"; echo "${!v:-0}"; }
node_ip() { echo "10.44.$(node_seg "$1").$((10 + $1))"; }
node_proxy_conf() {
  local i=$1 N="$W/n$1"
  cat > "$N/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: "$N/kube-proxy.kubeconfig"}
mode: iptables
clusterCIDR: 10.42.0.0/16
hostnameOverride: node-$i
bindAddress: $(node_ip "$i")
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
oomScoreAdj: 0
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {syncPeriod: 30s, minSyncPeriod: 1s}
YAML
}

# Node I's network from scratch (as at boot): netns, eth0 on its segment's bridge.
node_net() {
  local i=$1 ns="$TAG-n$1" seg ip
  seg=$(node_seg "$i"); ip=$(node_ip "$i")
  ip netns del "$ns" 2>/dev/null
  ip netns add "$ns" || return 1
  ip -n "$CP" link del "kn$i" 2>/dev/null
  ip -n "$CP" link add "kn$i" type veth peer name eth0 netns "$ns"
  ip -n "$CP" link set "kn$i" master "kbr$seg" up
  ip -n "$ns" link set lo up
  ip -n "$ns" addr add "$ip/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" route add default via "10.44.$seg.5"
  nsenter --net="/var/run/netns/$ns" sysctl -qw net.ipv4.ip_forward=1
  node_proxy_conf "$i"
}

# Boots node I (MODE no-proxy: without kube-proxy). Records the PID namespace for pids_of_node.
boot_node() {
  local i=$1 mode=${2:-}
  nsenter --net="/var/run/netns/$TAG-n$i" unshare -m -u -p --fork --kill-child --mount-proc \
    --propagation private bash "$ROOT/tests/kubernetes/node.sh" "$W" "$i" "$K" "$(node_ip "$i")" "$mode" &
  NODEPID[$i]=$!
  # The node's PID namespace, which stop_node and pids_of_node find its processes by: waited for
  # (up to 20 s on a loaded machine) until unshare has forked the node's first process and its
  # namespace reads back; an empty file would make every later lookup find nothing, quietly.
  local child="" ns=""
  for _ in $(seq 1 400); do
    child=$(cat "/proc/${NODEPID[$i]}/task/${NODEPID[$i]}/children" 2>/dev/null | awk '{print $1}')
    [ -n "$child" ] && ns=$(readlink "/proc/$child/ns/pid" 2>/dev/null) && [ -n "$ns" ] && break
    sleep 0.05
  done
  echo "$ns" > "$W/n$i/pidns"
  [ -n "$ns" ] || echo "$SUITE e2e: node-$i's PID namespace not found (boot_node)" >&2
}

# Node I's runtime and kubelet config: containerd 2.x (config version 3, the CRI split into its
# images and runtime plugins, NRI off: its socket would be made in the machine's /var/run/nri) and
# the kubelet's config file. Kubernetes >= 1.35 runs on
# this cgroup-v1 machine only with failCgroupV1: false. The kubelet's API is anonymous and
# AlwaysAllow (as the flag defaults once were): the apiserver reaches it without a client certificate.
node_runtime_files() {
  local i=$1 N="$W/n$1"
  cat > "$N/containerd.toml" <<TOML
version = 3
root = "$N/containerd/root"
state = "/run/containerd"
disabled_plugins = ["io.containerd.nri.v1.nri"]
[grpc]
  address = "$N/containerd.sock"
[plugins.'io.containerd.internal.v1.opt']
  path = "$N/containerd/opt"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "docker.io/hf/pause:e2e"
[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/opt/cni/bin"]
    conf_dir = "/etc/cni/net.d"
    max_conf_num = 1
[plugins.'io.containerd.grpc.v1.cri']
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
TOML
  cat > "$N/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
staticPodPath: $N/manifests
containerRuntimeEndpoint: unix://$N/containerd.sock
runtimeRequestTimeout: 2m
cgroupDriver: cgroupfs
cgroupsPerQOS: true
cgroupRoot: /$CGROOT-n$i
enforceNodeAllocatable: [pods]
failSwapOn: false
protectKernelDefaults: true
oomScoreAdj: 0
volumePluginDir: $N/volume-plugins
resolvConf: $W/resolv.conf
clusterDomain: cluster.local
clusterDNS: [10.43.0.10]
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
healthzBindAddress: 127.0.0.1
readOnlyPort: 0
registerNode: true
syncFrequency: 10s
authentication: {anonymous: {enabled: true}, webhook: {enabled: false}}
authorization: {mode: AlwaysAllow}
YAML
}
