#!/usr/bin/env bash
# Routing at fleet scale (issue 14): the real kube-apiserver and etcd of the current stack
# (tests/stack/build.sh), loaded with N Node objects (no kubelets), and `holdfast agent` with
# `routing: direct` in a private node netns whose segment holds every node address. Per N:
#   - agent start to all N routes programmed (the list, the table, the kernel);
#   - the agent's peak RSS (VmHWM) once they are;
#   - one Node's InternalIP changed through the API to its route's new gateway in the kernel;
#   - re-apply at boot from disk: every own route flushed, `holdfast routes apply` timed.
# Everything runs in namespaces made here and is removed at the end (trap). Needs root.
#   sudo bench/routing.sh [N...]        (default: 1000 5000) — prints a markdown table.
set -uo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "bench/routing.sh: needs root" >&2; exit 1; }
COUNTS=("$@"); [ ${#COUNTS[@]} -gt 0 ] || COUNTS=(1000 5000)
STACK=$(tests/stack/build.sh) || exit 1
export PATH="$STACK:$PATH"
HF=$(realpath "$(scripts/build-release.sh)")
TAG="hfrt$$"; NODE="$TAG-node"
WORK=$(mktemp -d "/tmp/$TAG.XXXX")
PIDS=()
cleanup() {
  for ((n=${#PIDS[@]}-1; n>=0; n--)); do kill "${PIDS[$n]}" 2>/dev/null; wait "${PIDS[$n]}" 2>/dev/null; done
  ip netns del "$NODE" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
in_node() { ip netns exec "$NODE" "$@"; }
now_ms() { date +%s%3N; }

ip netns add "$NODE"
in_node ip link set lo up
in_node ip addr add 10.44.0.5/32 dev lo
# The segment every node is on: a veth pair inside the netns, 10.77.0.0/16 on one end.
in_node ip link add eth0 type veth peer name seg
in_node ip addr add 10.77.255.254/16 dev eth0
in_node ip link set eth0 up; in_node ip link set seg up

cd "$WORK"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=hf-bench-ca -keyout ca.key -out ca.crt 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver -keyout api.key -out api.csr 2>/dev/null
printf 'subjectAltName=IP:10.44.0.5\n' > san.ext
openssl x509 -req -in api.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile san.ext -out api.crt 2>/dev/null
openssl genrsa -out sa.key 2048 2>/dev/null; openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
TOKEN=bench-$RANDOM$RANDOM
echo "$TOKEN,admin,1,system:masters" > tokens.csv
cd - >/dev/null
ip netns exec "$NODE" etcd --data-dir "$WORK/etcd" --listen-client-urls http://127.0.0.1:2379 \
  --advertise-client-urls http://127.0.0.1:2379 --listen-peer-urls http://127.0.0.1:2380 \
  --quota-backend-bytes 4294967296 >"$WORK/etcd.log" 2>&1 &
PIDS+=($!)
ip netns exec "$NODE" "$STACK/kube-apiserver" --etcd-servers=http://127.0.0.1:2379 --secure-port=443 \
  --bind-address=10.44.0.5 --advertise-address=10.44.0.5 --tls-cert-file="$WORK/api.crt" \
  --tls-private-key-file="$WORK/api.key" --client-ca-file="$WORK/ca.crt" --token-auth-file="$WORK/tokens.csv" \
  --authorization-mode=RBAC --service-account-key-file="$WORK/sa.pub" \
  --service-account-signing-key-file="$WORK/sa.key" --service-account-issuer=https://kubernetes.default.svc \
  --service-cluster-ip-range=10.43.0.0/16 >"$WORK/apiserver.log" 2>&1 &
PIDS+=($!)
api() { in_node curl -s --cacert "$WORK/ca.crt" -H "Authorization: Bearer $TOKEN" "$@"; }
for _ in $(seq 1 240); do api https://10.44.0.5/readyz 2>/dev/null | grep -q '^ok$' && break; sleep 0.5; done
api https://10.44.0.5/readyz | grep -q '^ok$' || { tail -20 "$WORK/apiserver.log"; exit 1; }
cat > "$WORK/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters: [{name: b, cluster: {server: "https://10.44.0.5:443", certificate-authority: "$WORK/ca.crt"}}]
users: [{name: u, user: {token: "$TOKEN"}}]
contexts: [{name: c, context: {cluster: b, user: u}}]
current-context: c
KC
cat > "$WORK/conf.json" <<JSON
{"cniVersion":"1.0.0","name":"bench","type":"holdfast","stateDir":"$WORK/state","mtu":1450,
 "ipam":{"ranges":[[{"subnet":"usePodCidr"}]]},"routing":{"mode":"direct"},
 "kubernetes":{"kubeconfig":"$WORK/kubeconfig","nodeName":"self","timeoutMs":5000,"refreshSeconds":60}}
JSON

# Node I: InternalIP 10.77.(I/250).(I%250+1), podCIDR 10.(100+I/256).(I%256).0/24; node 0 is "self".
node_json() {
  local i=$1 ip="10.77.$(( $1 / 250 )).$(( $1 % 250 + 1 ))" cidr="10.$(( 100 + $1 / 256 )).$(( $1 % 256 )).0/24"
  local name; name=$([ "$i" = 0 ] && echo self || echo "n$i")
  printf '{"apiVersion":"v1","kind":"Node","metadata":{"name":"%s"},"spec":{"podCIDR":"%s","podCIDRs":["%s"]},"status":{"addresses":[{"type":"InternalIP","address":"%s"}]}}' \
    "$name" "$cidr" "$cidr" "$ip"
}
# Nodes FROM..TO created over one connection (curl's config file: one request per `next`).
create_nodes() {
  local i cfg="$WORK/create.curl"
  : > "$cfg"
  for ((i=$1; i<=$2; i++)); do
    # (The JSON has no whitespace: curl's config takes it unquoted.)
    printf 'url = "https://10.44.0.5/api/v1/nodes"\nrequest = "POST"\nheader = "Content-Type: application/json"\ndata = %s\noutput = "/dev/null"\nnext\n' \
      "$(node_json "$i")" >> "$cfg"
  done
  in_node curl -s --cacert "$WORK/ca.crt" -H "Authorization: Bearer $TOKEN" -K "$cfg" >/dev/null
}
own_routes() { in_node ip route show proto 104 | grep -c .; }

row() { printf '| %6s | %22s | %18s | %22s | %24s |\n' "$@"; }
echo
row "nodes" "start to all routes ms" "agent peak RSS KiB" "Node update to route ms" "re-apply from disk ms"
row "---" "---" "---" "---" "---"
have=0
for n in "${COUNTS[@]}"; do
  t0=$(now_ms); create_nodes $((have)) "$n"; have=$((n + 1))
  echo "bench/routing.sh: $n nodes created in $(( $(now_ms) - t0 )) ms" >&2
  rm -rf "$WORK/state"; in_node ip route flush proto 104
  t0=$(now_ms)
  ip netns exec "$NODE" "$HF" agent --conf "$WORK/conf.json" --sa-dir /nonexistent >"$WORK/agent.log" 2>&1 &
  AGENT=$!; PIDS+=($AGENT)
  start=""
  for _ in $(seq 1 1200); do [ "$(own_routes)" -ge "$n" ] && { start=$(( $(now_ms) - t0 )); break; }; sleep 0.05; done
  rss=$(awk '/^VmHWM/ {print $2}' "/proc/$AGENT/status")
  # One Node's address moves: its route must follow.
  cidr="10.$(( 100 + 7 / 256 )).$(( 7 % 256 )).0/24"
  t0=$(now_ms)
  api -X PATCH -H 'Content-Type: application/merge-patch+json' \
    --data '{"status":{"addresses":[{"type":"InternalIP","address":"10.77.254.7"}]}}' \
    https://10.44.0.5/api/v1/nodes/n7/status >/dev/null
  upd=""
  for _ in $(seq 1 400); do in_node ip route show "$cidr" | grep -q 'via 10.77.254.7' && { upd=$(( $(now_ms) - t0 )); break; }; sleep 0.01; done
  kill "$AGENT"; wait "$AGENT" 2>/dev/null
  # The node's boot, without the API: every own route gone, then the table from disk.
  in_node ip route flush proto 104
  t0=$(now_ms)
  in_node "$HF" routes apply --conf "$WORK/conf.json" >/dev/null 2>"$WORK/apply.err"
  reapply=$(( $(now_ms) - t0 ))
  [ "$(own_routes)" -ge "$n" ] || reapply="$reapply (only $(own_routes) routes)"
  row "$n" "${start:-not in 60 s}" "$rss" "${upd:-not in 4 s}" "$reapply"
  # Back to the first address for the next round.
  api -X PATCH -H 'Content-Type: application/merge-patch+json' \
    --data "{\"status\":{\"addresses\":[{\"type\":\"InternalIP\",\"address\":\"10.77.0.8\"}]}}" \
    https://10.44.0.5/api/v1/nodes/n7/status >/dev/null
done
echo
