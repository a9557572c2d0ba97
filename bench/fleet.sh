#!/usr/bin/env bash
# Routing at fleet scale (issue 14 §6): the real etcd and kube-apiserver of the current stack
# (tests/stack/build.sh) in a netns of their own, loaded with N Node objects (no kubelets), and
# the release `holdfast agent` in a "node" netns whose eth0 is a veth to the apiserver's. The
# agent's config is the shipped conf/10-holdfast-k8s.conflist (routing "auto", mtu 1450,
# masquerade on) with only stateDir, kubeconfig, nodeName and the mode changed. Node i's InternalIP
# is in 10.77.0.0/16, the node netns' segment, so `auto` routes every peer directly; `vxlan` sends
# every peer through the VXLAN device (a neighbour, an FDB entry and an onlink route each). Per N
# and mode:
#   - start to all routes: agent started (empty stateDir) until the node netns holds all N-1
#     routes of protocol 104 (polled every 20 ms);
#   - agent peak RSS: VmHWM of the agent once all that is done;
#   - Node update to route: one Node's InternalIP changed through the status subresource (curl,
#     from the request's start) until the kernel has the new gateway (auto) or the new FDB
#     destination and neighbour MAC (vxlan), polled in a tight loop;
#   - re-apply from disk: a cold boot (a new node netns: no route, neighbour, FDB entry or VXLAN
#     device; the API unreachable) then `holdfast routes apply` with the agent's stateDir, timed
#     as a whole process, REAPPLY_RUNS times (median, min-max), each checked to restore N-1 routes.
# Never touches the root netns; everything made here is removed at exit (trap). Needs root and jq.
#   sudo bench/fleet.sh [N...]          (default: 1000 5000) — prints a markdown table.
#   FLEET_MODES="auto vxlan" (default) picks the modes; REAPPLY_RUNS=3 (default); FLEET_LOGS=DIR
#   keeps the agents', apiserver's and etcd's logs there.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "bench/fleet.sh: needs root" >&2; exit 1; }
command -v jq >/dev/null || { echo "bench/fleet.sh: needs jq" >&2; exit 1; }
COUNTS=("$@"); [ ${#COUNTS[@]} -gt 0 ] || COUNTS=(1000 5000)
read -r -a MODES <<< "${FLEET_MODES:-auto vxlan}"
REAPPLY_RUNS=${REAPPLY_RUNS:-3}
prev=1
for n in "${COUNTS[@]}"; do
  [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -gt "$prev" ] && [ "$n" -le 50000 ] \
    || { echo "bench/fleet.sh: node counts must grow, each 2..50000: $*" >&2; exit 2; }
  prev=$n
done

K=$(tests/stack/build.sh 2>/dev/null) || { echo "bench/fleet.sh: tests/stack/build.sh failed" >&2; exit 1; }
HF=$(realpath "$(scripts/build-release.sh)")
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)

TAG="hffl$$"; API="$TAG-api"; NODE="$TAG-node"; BOOT="$TAG-boot"
W=$(mktemp -d "/tmp/$TAG.XXXX")
PIDS=()
cleanup() {
  set +e
  local i ns
  for ((i=${#PIDS[@]}-1; i>=0; i--)); do kill "${PIDS[$i]}" 2>/dev/null; wait "${PIDS[$i]}" 2>/dev/null; done
  for ns in "$BOOT" "$NODE" "$API"; do ip netns del "$ns" 2>/dev/null; done
  [ -z "${FLEET_LOGS:-}" ] || { mkdir -p "$FLEET_LOGS" && cp "$W"/*.log "$FLEET_LOGS/"; }
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
die() { echo "bench/fleet.sh: $*" >&2; exit 1; }
log() { echo "bench/fleet.sh: $*" >&2; }
now_ns() { date +%s%N; }
ms_since() { echo $(( ($(now_ns) - $1) / 1000000 )); }
in_api() { nsenter --net="/var/run/netns/$API" "$@"; }
kc() { in_api "$K/kubectl" --kubeconfig "$W/admin.kubeconfig" "$@"; }

# Node i: name n-i; InternalIP 10.77.(1+i/250).(1+i%250), node 0 (this node) 10.77.255.254, the
# node netns' eth0; podCIDR 10.(128+i/256).(i%256).0/24.
node_ip() { [ "$1" = 0 ] && echo 10.77.255.254 || echo "10.77.$((1 + $1 / 250)).$((1 + $1 % 250))"; }
node_cidr() { echo "10.$((128 + $1 / 256)).$(($1 % 256)).0/24"; }

# The PKI (as tests/kubernetes/cluster.sh's pki): a CA, the apiserver's certificate for
# 10.77.0.1, the service-account keys, an admin token.
pki() {
  (
    cd "$W" || exit 1
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=hf-fleet-ca -keyout ca.key -out ca.crt 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver -keyout apiserver.key -out apiserver.csr 2>/dev/null
    printf 'subjectAltName=IP:10.77.0.1,IP:127.0.0.1\n' > san.ext
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile san.ext -out apiserver.crt 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null && openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  ) || die "openssl failed"
  ADMIN=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
  echo "$ADMIN,admin,1,system:masters" > "$W/tokens.csv"
  cat > "$W/admin.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters: [{name: fleet, cluster: {server: "https://10.77.0.1:6443", certificate-authority: "$W/ca.crt"}}]
users: [{name: u, user: {token: "$ADMIN"}}]
contexts: [{name: c, context: {cluster: fleet, user: u}}]
current-context: c
KC
}

# etcd and the apiserver in their netns (started with nsenter directly, so $! is the server).
# etcd skips fsync: the load is not what is measured, and 5,000 fsynced creates on this disk
# would take minutes.
control_plane() {
  ip netns add "$API"
  ip -n "$API" link set lo up
  # On lo, so it outlives each node netns' veth (kubectl runs here too).
  ip -n "$API" addr add 10.77.0.1/32 dev lo
  nsenter --net="/var/run/netns/$API" "$K/etcd" --data-dir "$W/etcd" --unsafe-no-fsync \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster default=http://127.0.0.1:2380 >"$W/etcd.log" 2>&1 &
  PIDS+=($!)
  nsenter --net="/var/run/netns/$API" "$K/kube-apiserver" --etcd-servers=http://127.0.0.1:2379 \
    --secure-port=6443 --bind-address=0.0.0.0 --advertise-address=10.77.0.1 \
    --tls-cert-file="$W/apiserver.crt" --tls-private-key-file="$W/apiserver.key" \
    --client-ca-file="$W/ca.crt" --token-auth-file="$W/tokens.csv" --authorization-mode=RBAC \
    --service-account-key-file="$W/sa.pub" --service-account-signing-key-file="$W/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range=10.43.0.0/16 --profiling=false --v=0 >"$W/apiserver.log" 2>&1 &
  PIDS+=($!)
}

# The node netns (again, as after a boot): eth0 a veth to the apiserver's netns.
node_net() {
  ip netns del "$NODE" 2>/dev/null || true
  ip netns add "$NODE"
  ip -n "$NODE" link set lo up
  ip -n "$API" link del up0 2>/dev/null || true
  ip -n "$API" link add up0 type veth peer name eth0 netns "$NODE"
  ip -n "$API" link set up0 up
  ip -n "$API" route add "$(node_ip 0)/32" dev up0
  ip -n "$NODE" addr add "$(node_ip 0)/16" dev eth0
  ip -n "$NODE" link set eth0 up
}

# A cold boot of the node with the API unreachable: a fresh netns whose eth0 (same address) is a
# veth to nowhere (its peer stays inside, with no address).
boot_net() {
  ip netns del "$BOOT" 2>/dev/null || true
  ip netns add "$BOOT"
  ip -n "$BOOT" link set lo up
  ip -n "$BOOT" link add eth0 type veth peer name nowhere
  ip -n "$BOOT" addr add "$(node_ip 0)/16" dev eth0
  ip -n "$BOOT" link set eth0 up
  ip -n "$BOOT" link set nowhere up
}

# Nodes FROM..TO-1 as List manifests of 500, created 4 lists at a time, status included (the
# apiserver keeps a Node's status on create: kubelets register that way).
load_nodes() {
  local from=$1 to=$2
  rm -f "$W"/chunk-*.json
  awk -v from="$from" -v to="$to" -v dir="$W" '
    function ip(i) { return i == 0 ? "10.77.255.254" : sprintf("10.77.%d.%d", 1 + int(i / 250), 1 + i % 250) }
    function cidr(i) { return sprintf("10.%d.%d.0/24", 128 + int(i / 256), i % 256) }
    BEGIN {
      for (i = from; i < to; i++) {
        if ((i - from) % 500 == 0) {
          if (f != "") { printf "]}" > f; close(f) }
          f = sprintf("%s/chunk-%06d.json", dir, i)
          printf "{\"apiVersion\":\"v1\",\"kind\":\"List\",\"items\":[" > f
        } else printf "," > f
        printf "{\"apiVersion\":\"v1\",\"kind\":\"Node\",\"metadata\":{\"name\":\"n-%d\"},\"spec\":{\"podCIDR\":\"%s\",\"podCIDRs\":[\"%s\"]},\"status\":{\"addresses\":[{\"type\":\"InternalIP\",\"address\":\"%s\"},{\"type\":\"Hostname\",\"address\":\"n-%d\"}]}}", i, cidr(i), cidr(i), ip(i), i > f
      }
      if (f != "") { printf "]}" > f; close(f) }
    }'
  printf '%s\n' "$W"/chunk-*.json \
    | xargs -P 4 -I{} nsenter --net="/var/run/netns/$API" "$K/kubectl" --kubeconfig "$W/admin.kubeconfig" create -f {} -o name \
      >> "$W/created.log" 2>> "$W/create.err" || true
}

# Every Node there, each with its InternalIP; fails loudly otherwise.
check_nodes() {
  local want=$1 have ips
  have=$(kc get nodes --no-headers 2>/dev/null | wc -l)
  [ "$have" -eq "$want" ] || { tail -5 "$W/create.err" >&2; die "$have Nodes in the API, want $want"; }
  ips=$(kc get nodes -o jsonpath='{range .items[*]}{.metadata.name}={.status.addresses[?(@.type=="InternalIP")].address}{"\n"}{end}')
  local good; good=$(echo "$ips" | awk -F= '$2 ~ /^10\.77\./' | wc -l)
  # (The apiserver keeps a Node's status given on create, as kubelets register; if one ever
  # dropped it, this says so rather than measure a cluster without addresses.)
  [ "$good" -eq "$want" ] || die "only $good of $want Nodes have their InternalIP"
  [ "$(echo "$ips" | grep -c '^n-0=10.77.255.254$')" -eq 1 ] || die "n-0 (this node) has not its InternalIP"
}

# The shipped conflist, for this bench's stateDir, API and node, in MODE.
conf_for() {
  jq --arg state "$W/state" --arg kc "$W/admin.kubeconfig" --arg mode "$1" \
    '.plugins[0] += {stateDir: $state, logLevel: "info", routing: (.plugins[0].routing + {mode: $mode})}
     | .plugins[0].kubernetes += {kubeconfig: $kc, nodeName: "n-0"}' \
    conf/10-holdfast-k8s.conflist > "$W/$1.conflist"
  echo "$W/$1.conflist"
}

own_routes() { ip -n "$1" route show proto 104 | grep -c . || true; }
fdb_entries() { bridge -n "$1" fdb show dev holdfast-vx 2>/dev/null | grep -c ' dst ' || true; }
median() { sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }

# Node I's InternalIP changed to NEW through the API; ms from the request's start until the
# kernel follows (MODE auto: the route's gateway; vxlan: the FDB destination and the neighbour's
# MAC), or "not in 10 s".
update_to_route() {
  local mode=$1 i=$2 new=$3 cidr mac t0 deadline
  cidr=$(node_cidr "$i")
  mac=$(printf '0e:68:%02x:%02x:%02x:%02x' ${new//./ })
  printf '{"status":{"addresses":[{"type":"InternalIP","address":"%s"},{"type":"Hostname","address":"n-%d"}]}}' \
    "$new" "$i" > "$W/patch.json"
  t0=$(now_ns); deadline=$((t0 + 10000000000))
  in_api curl -sS -o "$W/patch.out" --cacert "$W/ca.crt" -H "Authorization: Bearer $ADMIN" -X PATCH \
    -H 'Content-Type: application/merge-patch+json' --data-binary @"$W/patch.json" \
    "https://10.77.0.1:6443/api/v1/nodes/n-$i/status" &
  local curl=$!
  while [ "$(now_ns)" -lt "$deadline" ]; do
    # (grep reads it all: `grep -q` would end the dump with SIGPIPE, a failed pipeline.)
    if [ "$mode" = vxlan ]; then
      bridge -n "$NODE" fdb show dev holdfast-vx | grep "^$mac dst $new " >/dev/null \
        && ip -n "$NODE" neigh show dev holdfast-vx "${cidr%/*}" | grep "lladdr $mac" >/dev/null \
        && { ms_since "$t0"; wait "$curl"; return; }
    else
      ip -n "$NODE" route show "$cidr" proto 104 | grep "via $new " >/dev/null && { ms_since "$t0"; wait "$curl"; return; }
    fi
  done
  wait "$curl"
  echo "not in 10 s"
}

# One agent run: fresh node netns and stateDir, the agent until every route is in, one update,
# then REAPPLY_RUNS cold boots re-applied from the stateDir. Sets ROW, the table's row (not run
# in a subshell: the agent's PID must reach the trap).
measure() {
  local n=$1 mode=$2 m=$3 conf agent t0 start="" rss upd got i new times=() fdb=""
  conf=$(conf_for "$mode")
  node_net
  rm -rf "$W/state"
  t0=$(now_ns)
  nsenter --net="/var/run/netns/$NODE" "$HF" agent --conf "$conf" --sa-dir "$W/no-sa" >"$W/agent-$n-$mode.log" 2>&1 &
  agent=$!; PIDS+=("$agent")
  while [ $(( $(now_ns) - t0 )) -lt 120000000000 ]; do
    [ "$(own_routes "$NODE")" -ge $((n - 1)) ] && { start=$(ms_since "$t0"); break; }
    kill -0 "$agent" 2>/dev/null || break
    sleep 0.02
  done
  [ -n "$start" ] || { tail -20 "$W/agent-$n-$mode.log" >&2; die "$mode, $n nodes: $(own_routes "$NODE") of $((n - 1)) routes after 120 s"; }
  [ "$mode" != vxlan ] || fdb=$(fdb_entries "$NODE")
  # Let the agent's first round (the cluster-info cache) finish before the update.
  sleep 2
  i=$((n - 1 - m)); new="10.77.$((200 + m)).$((1 + n / 100 % 250))"
  upd=$(update_to_route "$mode" "$i" "$new")
  sleep 1
  rss=$(awk '/^VmHWM/ {print $2}' "/proc/$agent/status")
  [ "$(cat "/proc/$agent/comm")" = holdfast ] || die "PID $agent is not the agent"
  kill "$agent"; wait "$agent" 2>/dev/null || true
  unset 'PIDS[-1]'
  ip netns del "$NODE"
  for ((r=0; r<REAPPLY_RUNS; r++)); do
    boot_net
    t0=$(now_ns)
    nsenter --net="/var/run/netns/$BOOT" "$HF" routes apply --conf "$conf" >"$W/apply.out" 2>&1 \
      || { cat "$W/apply.out" >&2; die "routes apply failed"; }
    times+=("$(ms_since "$t0")")
    got=$(own_routes "$BOOT")
    [ "$got" -eq $((n - 1)) ] || die "re-apply restored $got of $((n - 1)) routes: $(cat "$W/apply.out")"
    if [ "$mode" = vxlan ]; then
      [ "$(fdb_entries "$BOOT")" -eq $((n - 1)) ] || die "re-apply restored $(fdb_entries "$BOOT") FDB entries"
    fi
  done
  ip netns del "$BOOT"
  local med lo hi
  med=$(printf '%s\n' "${times[@]}" | median)
  lo=$(printf '%s\n' "${times[@]}" | sort -n | head -1); hi=$(printf '%s\n' "${times[@]}" | sort -n | tail -1)
  [ -z "$fdb" ] || [ "$fdb" -eq $((n - 1)) ] || die "vxlan: $fdb FDB entries, want $((n - 1))"
  ROW=$(printf '| %s | %s | %s | %s | %s | %s | %s (%s–%s) |' "$n" "$mode" "$((n - 1))" "$start" "$rss" "$upd" "$med" "$lo" "$hi")
}

pki
control_plane
up=""
for _ in $(seq 1 240); do kc get --raw /readyz >/dev/null 2>&1 && { up=1; break; }; sleep 0.5; done
[ -n "$up" ] || { tail -20 "$W/apiserver.log" >&2; die "kube-apiserver not ready"; }

ROWS=()
have=0
for n in "${COUNTS[@]}"; do
  t0=$(now_ns)
  load_nodes "$have" "$n"
  check_nodes "$n"
  have=$n
  log "$n Nodes in the API, each with its InternalIP (loaded in $(( $(ms_since "$t0") / 1000 )) s)"
  m=0
  for mode in "${MODES[@]}"; do
    measure "$n" "$mode" "$m"
    log "$ROW"
    ROWS+=("$ROW")
    m=$((m + 1))
  done
done

echo
echo "holdfast $COMMIT (release, $HF), kube-apiserver $("$K/kubectl" version --client -o json | jq -r .clientVersion.gitVersion), $(nproc) cores, $(date -u +%Y-%m-%d)"
echo
echo "| nodes | mode | peers | start to all routes ms | agent peak RSS KiB | Node update to route ms | re-apply from disk ms, median (min–max) of $REAPPLY_RUNS |"
echo "|---|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
