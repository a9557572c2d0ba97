#!/usr/bin/env bash
# holdfast against a real kube-apiserver and etcd (the current stack of tests/stack/build.sh), all
# inside a private node netns:
#   1. `holdfast sync` and ADD read the real Node's podCIDRs with the least-privileged RBAC of
#      conf/kubernetes/holdfast.yaml (the apiserver's addresses from the default/kubernetes
#      EndpointSlice, read by name under the manifest's Role);
#   2. a token without rights (403) falls back to the cache;
#   3. with the apiserver stopped, ADD still succeeds from the cache.
# Run as root; prints "apiserver e2e: N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/../.."
HF=${HOLDFAST_BIN:-target/debug/holdfast}
[ -x "$HF" ] || cargo build --quiet --bin holdfast
HF=$(realpath "$HF")
STACK=$(tests/stack/build.sh) || { echo "apiserver e2e: could not build the current stack" >&2; exit 1; }
APISERVER=$STACK/kube-apiserver
export PATH="$STACK:$PATH" # its etcd
KVER=$("$STACK/kubectl" version --client -o json 2>/dev/null | grep -o '"gitVersion": *"v[^"]*"' | head -1 | grep -o '[0-9][0-9.]*')

TAG="hfapi$$"
NODE="$TAG-node"
POD="$TAG-pod"
WORK=$(mktemp -d "/tmp/$TAG.XXXX")
PIDS=()
pass=0; fail=0
ok()   { pass=$((pass+1)); echo "ok   - $*"; }
bad()  { fail=$((fail+1)); echo "FAIL - $*"; }
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  ip netns del "$POD" 2>/dev/null; ip netns del "$NODE" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
in_node() { ip netns exec "$NODE" "$@"; }

ip netns add "$NODE"; ip netns add "$POD"
in_node ip link set lo up
in_node ip addr add 10.43.0.1/32 dev lo      # the service VIP
in_node ip addr add 10.44.0.5/32 dev lo      # the apiserver's real address

# PKI: a CA, a serving certificate for the VIP and kubernetes.default.svc (not for the real
# address: holdfast must verify it against the VIP's name), a service-account key.
cd "$WORK"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=holdfast-e2e-ca -keyout ca.key -out ca.crt 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver -keyout apiserver.key -out apiserver.csr 2>/dev/null
printf 'subjectAltName=IP:10.43.0.1,DNS:kubernetes.default.svc,DNS:kubernetes\n' > san.ext
openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile san.ext -out apiserver.crt 2>/dev/null
openssl genrsa -out sa.key 2048 2>/dev/null; openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
ADMIN=admin-$RANDOM$RANDOM; HFTOKEN=holdfast-$RANDOM$RANDOM; NOBODY=nobody-$RANDOM$RANDOM
cat > tokens.csv <<CSV
$ADMIN,admin,1,system:masters
$HFTOKEN,system:serviceaccount:kube-system:holdfast,2,system:serviceaccounts
$NOBODY,nobody,3,
CSV
cd - >/dev/null

# Started with `ip netns exec` directly (not through a shell function), so $! is the server.
ip netns exec "$NODE" etcd --data-dir "$WORK/etcd" --listen-client-urls http://127.0.0.1:2379 \
  --advertise-client-urls http://127.0.0.1:2379 --listen-peer-urls http://127.0.0.1:2380 >"$WORK/etcd.log" 2>&1 &
PIDS+=($!)
start_apiserver() {
  ip netns exec "$NODE" "$APISERVER" --etcd-servers=http://127.0.0.1:2379 --secure-port=443 --bind-address=0.0.0.0 \
    --advertise-address=10.44.0.5 --tls-cert-file="$WORK/apiserver.crt" \
    --tls-private-key-file="$WORK/apiserver.key" --client-ca-file="$WORK/ca.crt" \
    --token-auth-file="$WORK/tokens.csv" --authorization-mode=RBAC \
    --service-account-key-file="$WORK/sa.pub" --service-account-signing-key-file="$WORK/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc --service-cluster-ip-range=10.43.0.0/16 \
    >"$WORK/apiserver.log" 2>&1 &
  APIPID=$!
  PIDS+=($APIPID)
  for _ in $(seq 1 120); do
    in_node curl -s --cacert "$WORK/ca.crt" -H "Authorization: Bearer $ADMIN" https://10.43.0.1/readyz 2>/dev/null | grep -q '^ok$' && return 0
    sleep 0.5
  done
  echo "kube-apiserver did not become ready:"; tail -20 "$WORK/apiserver.log"; return 1
}
api() { # METHOD PATH [BODY-FILE] (as admin)
  in_node curl -s --cacert "$WORK/ca.crt" -H "Authorization: Bearer $ADMIN" -X "$1" \
    -H 'Content-Type: application/yaml' ${3:+--data-binary @"$3"} "https://10.43.0.1$2"
}
start_apiserver || exit 1
ok "kube-apiserver $KVER ready at 10.43.0.1:443 (advertised 10.44.0.5:443)"

cat > "$WORK/node.yaml" <<YAML
apiVersion: v1
kind: Node
metadata: {name: node-a}
spec: {podCIDR: 10.42.7.0/24, podCIDRs: [10.42.7.0/24]}
YAML
api POST /api/v1/nodes "$WORK/node.yaml" >/dev/null
# The RBAC of conf/: each document posted as it is.
awk -v dir="$WORK" '/^---/{n++; next} {print > (dir "/doc" n ".yaml")}' conf/kubernetes/holdfast.yaml
for d in "$WORK"/doc*.yaml; do
  case $(grep -m1 '^kind:' "$d" | awk '{print $2}') in
    ClusterRole) api POST /apis/rbac.authorization.k8s.io/v1/clusterroles "$d" >/dev/null ;;
    ClusterRoleBinding) api POST /apis/rbac.authorization.k8s.io/v1/clusterrolebindings "$d" >/dev/null ;;
    Role) api POST /apis/rbac.authorization.k8s.io/v1/namespaces/default/roles "$d" >/dev/null ;;
    RoleBinding) api POST /apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings "$d" >/dev/null ;;
  esac
done

kubeconfig() { # FILE TOKEN
  cat > "$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster: {server: "https://10.43.0.1:443", certificate-authority: "$WORK/ca.crt"}
users:
- name: u
  user: {token: "$2"}
contexts:
- name: c
  context: {cluster: e2e, user: u}
current-context: c
KC
}
kubeconfig "$WORK/kc-holdfast" "$HFTOKEN"
kubeconfig "$WORK/kc-nobody" "$NOBODY"
conf() { # KUBECONFIG
  cat <<JSON
{"cniVersion":"1.0.0","name":"e2e","type":"holdfast","stateDir":"$WORK/state","logLevel":"warn",
 "ipam":{"ranges":[[{"subnet":"usePodCidr"}]],"routes":[{"dst":"0.0.0.0/0"}]},
 "kubernetes":{"kubeconfig":"$1","nodeName":"node-a","timeoutMs":1500,"refreshSeconds":0}}
JSON
}
conf "$WORK/kc-holdfast" > "$WORK/conf-holdfast"
conf "$WORK/kc-nobody" > "$WORK/conf-nobody"
cni() { # COMMAND CID CONF-FILE
  in_node env CNI_COMMAND="$1" CNI_CONTAINERID="$2" CNI_NETNS="/var/run/netns/$POD" CNI_IFNAME=eth0 \
    CNI_PATH=/usr/lib/cni "$HF" < "$3" 2>"$WORK/stderr"
}

out=$(in_node "$HF" sync --conf "$WORK/conf-holdfast" 2>&1)
if echo "$out" | grep -q 'fetched from 10.43.0.1:443' && echo "$out" | grep -q 'podCIDRs \[10.42.7.0/24\]' \
   && echo "$out" | grep -q 'apiserver endpoints \[10.44.0.5:443\]'; then
  ok "holdfast sync with the conf/ role: $(echo "$out" | head -1)"
else bad "holdfast sync: $out"; fi

r=$(cni ADD c1 "$WORK/conf-holdfast")
if echo "$r" | grep -q '"address":"10.42.7.' && ! grep -q WARN "$WORK/stderr"; then
  ok "ADD got $(echo "$r" | grep -o '"address":"[^"]*"' | head -1) from the real Node, no fallback"
else bad "ADD: $r $(cat "$WORK/stderr")"; fi
cni DEL c1 "$WORK/conf-holdfast" >/dev/null || bad "DEL c1"

r=$(cni ADD c2 "$WORK/conf-nobody")
if echo "$r" | grep -q '"address":"10.42.7.' && grep -q 'HTTP 403' "$WORK/stderr"; then
  ok "a token without rights falls back: $(grep -o 'Kubernetes API unreachable.*' "$WORK/stderr" | cut -c1-160)"
else bad "ADD with a 403 token: $r $(cat "$WORK/stderr")"; fi
cni DEL c2 "$WORK/conf-nobody" >/dev/null || bad "DEL c2"

kill "$APIPID"; wait "$APIPID" 2>/dev/null
r=$(cni ADD c3 "$WORK/conf-holdfast")
if echo "$r" | grep -q '"address":"10.42.7.' && grep -q 'connection refused' "$WORK/stderr"; then
  ok "apiserver stopped, ADD from the cache: $(grep -o 'Kubernetes API unreachable.*' "$WORK/stderr" | cut -c1-160)"
else bad "ADD with the API stopped: $r $(cat "$WORK/stderr")"; fi
cni DEL c3 "$WORK/conf-holdfast" >/dev/null || bad "DEL c3"
left=$(in_node ip -o link | grep -vc ': lo:')
[ "$left" -eq 0 ] && ok "nothing left in the node netns" || bad "$left links left"

echo "apiserver e2e: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
