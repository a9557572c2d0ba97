#!/usr/bin/env bash
# holdfast under a real containerd (Debian's 1.6, runc), all inside a private node netns and a
# private mount namespace (ctr and containerd 1.6 hard-code /etc/cni/net.d, /opt/cni/bin,
# /var/lib/cni, /run/containerd and /var/run/netns; they are overlaid with directories of this
# run). No registry is reachable: the image is built from busybox-static and imported.
#   `ctr run --cni`: the container gets its address from holdfast, pings the node, the node pings
#   it; when it exits ctr runs DEL (empty CNI_NETNS) and nothing is left.
# Run as root; prints "containerd e2e: N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/../.."
HF=$(realpath "${HOLDFAST_BIN:-target/debug/holdfast}")
for p in containerd runc busybox-static containernetworking-plugins; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
    || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$p" >/dev/null
done

TAG="hfctr$$"
NODE="$TAG-node"
WORK=$(mktemp -d "/tmp/$TAG.XXXX")
cleanup() {
  ip netns del "$NODE" 2>/dev/null
  # containerd's overlay mounts lived in the private mount namespace and went with it.
  rm -rf "$WORK" 2>/dev/null || { sleep 1; rm -rf "$WORK"; }
}
trap cleanup EXIT
ip netns add "$NODE"
ip -n "$NODE" link set lo up
mkdir -p "$WORK"/{etc-cni,opt-cni,var-lib-cni,run-containerd,netns,root,state,hf}
cp "$HF" "$WORK/opt-cni/holdfast"
cp /usr/lib/cni/{loopback,host-local,portmap,bandwidth} "$WORK/opt-cni/"
cat > "$WORK/etc-cni/10-holdfast.conflist" <<JSON
{"cniVersion": "1.0.0", "name": "holdfast-e2e", "plugins": [
  {"type": "holdfast", "stateDir": "$WORK/hf", "logFile": "$WORK/holdfast.log", "logLevel": "debug",
   "capabilities": {"bandwidth": true},
   "ipam": {"ranges": [[{"subnet": "10.70.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}}
]}
JSON
cat > "$WORK/config.toml" <<TOML
version = 2
root = "$WORK/root"
state = "$WORK/state"
[grpc]
  address = "$WORK/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "docker.io/hf/pause:e2e"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
TOML
tests/containerd/image.sh "$WORK/busybox.tar" docker.io/hf/busybox:e2e

cat > "$WORK/inner.sh" <<'INNER'
set -uo pipefail
WORK=$1
pass=0; fail=0
ok()  { pass=$((pass+1)); echo "ok   - $*"; }
bad() { fail=$((fail+1)); echo "FAIL - $*"; }
for m in /etc/cni/net.d:etc-cni /opt/cni/bin:opt-cni /var/lib/cni:var-lib-cni /run/containerd:run-containerd /var/run/netns:netns; do
  mkdir -p "${m%%:*}" && mount --bind "$WORK/${m##*:}" "${m%%:*}" || { echo "FAIL - mount ${m%%:*}"; exit 1; }
done
containerd --config "$WORK/config.toml" >"$WORK/containerd.log" 2>&1 &
CPID=$!
ctr() { command ctr -a "$WORK/containerd.sock" -n e2e "$@"; }
for _ in $(seq 1 100); do ctr version >/dev/null 2>&1 && break; sleep 0.2; done
ctr version >/dev/null 2>&1 && ok "containerd $(containerd --version | awk '{print $3}') up in the node netns" || { bad "containerd did not start"; tail "$WORK/containerd.log"; exit 1; }
ctr images import "$WORK/busybox.tar" >/dev/null 2>&1 && ok "busybox image imported offline" || bad "ctr images import"

ctr run --rm --cni docker.io/hf/busybox:e2e c1 sh -c \
  'ip -4 -o addr show eth0; ping -c1 -W2 10.70.0.1 >/dev/null && echo POD-PINGS-NODE; sleep 4' >"$WORK/c1.out" 2>&1 &
RUN=$!
rec="$WORK/hf/attachments/holdfast-e2e/e2e-c1@eth0.json"
for _ in $(seq 1 100); do [ -f "$rec" ] && break; sleep 0.1; done
ipaddr=$(grep -o '"10\.70\.0\.[0-9]*"' "$rec" 2>/dev/null | head -1 | tr -d '"')
if [ -n "$ipaddr" ]; then ok "ADD from ctr: the container got $ipaddr"; else bad "no attachment record for the container ($(ls "$WORK/hf/attachments/holdfast-e2e" 2>&1))"; fi
sleep 1
ping -c1 -W2 "$ipaddr" >/dev/null 2>&1 && ok "the node pings the container at $ipaddr" || bad "the node cannot ping $ipaddr"
wait "$RUN"
grep -q POD-PINGS-NODE "$WORK/c1.out" && ok "the container pings the node (10.70.0.1)" || bad "container output: $(cat "$WORK/c1.out")"
grep -q "inet $ipaddr/24" "$WORK/c1.out" && ok "inside the container eth0 has $ipaddr/24" || bad "container eth0: $(head -1 "$WORK/c1.out")"
grep -q 'CNI_NETNS\|netns' "$WORK/holdfast.log" >/dev/null 2>&1
left_links=$(ip -o link | grep -c ': hf')
left_recs=$(ls "$WORK/hf/attachments/holdfast-e2e" 2>/dev/null | wc -l)
left_leases=$(ls "$WORK/hf/ipam/holdfast-e2e" 2>/dev/null | grep -c '^10\.')
if [ "$left_links$left_recs$left_leases" = 000 ]; then ok "after exit ctr ran DEL: no link, record or lease left"
else bad "left after exit: $left_links links, $left_recs records, $left_leases leases"; fi
kill "$CPID"; wait "$CPID" 2>/dev/null
echo "containerd e2e: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
INNER
# nsenter, not `ip netns exec`: the latter remounts /sys and hides the cgroup mounts runc needs.
nsenter --net="/var/run/netns/$NODE" unshare -m --propagation private bash "$WORK/inner.sh" "$WORK"
