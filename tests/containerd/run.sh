#!/usr/bin/env bash
# holdfast under a real containerd, all inside a private node netns and a private mount namespace
# (ctr and containerd hard-code /etc/cni/net.d, /opt/cni/bin, /var/lib/cni, /run/containerd and
# /var/run/netns; they are overlaid with directories of this run). Two runtimes:
#   tests/containerd/run.sh          Debian 12's containerd 1.6 and reference plugins 1.1.1
#   tests/containerd/run.sh BINDIR   the containerd 2.x of BINDIR (tests/stack/build.sh: sid's
#                                    2.1.9 and its plugins 1.9.1 in BINDIR/../cni), config version 3
# Debian 12's runc for both. No registry is reachable: the image is built from busybox-static and
# imported. The CNI config is conf/10-holdfast-portmap.conflist as shipped (holdfast, then portmap;
# cniVersion 1.0.0 with cniVersions ["1.0.0", "1.1.0"]).
#   `ctr run --cni`: the container gets its address from holdfast, pings the node, the node pings
#   it; when it exits ctr runs DEL (empty CNI_NETNS) and nothing is left.
#   CRI, as the kubelet drives it (tests/containerd/cri.rs, a small gRPC client: Debian has no
#   crictl): RunPodSandbox with bandwidth annotations; containerd passes the limits with
#   capitalised keys and 4294967295-bit bursts, holdfast applies them with its own burst rule;
#   StopPodSandbox twice and RemovePodSandbox (every DEL succeeds) leave nothing behind.
#   Versions and STATUS: containerd 1.6 reads cniVersion 1.0.0 and never calls STATUS; 2.x picks
#   1.1.0 from cniVersions and calls STATUS on every CRI Status, whose NetworkReady follows it: an
#   invalid config makes it false with holdfast's message, a range full of live pods does not
#   (SPEC §4: the extra pod's ADD fails naming the range instead).
# A wrapper in front of holdfast records every call (env, stdin, exit code) so the test can say
# what containerd really sent.
# Run as root; prints "containerd e2e: N passed, M failed" (1.6) or "containerd2 e2e: ..." (2.x).
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/containerd/lib.sh
STACK=${1:-}
ctr_tools
if [ -n "$STACK" ]; then
  ctr_stack "$STACK"
  PLUGINS=$PLUGINS2
  SUITE=containerd2
else
  PLUGINS=/usr/lib/cni
  SUITE=containerd
fi

ctr_world hfctr
ctr_plugins "$PLUGINS"
ctr_conflist
if [ -z "$STACK" ]; then ctr_config_v2 "$WORK/config.toml"; else ctr_config_v3 "$WORK/config.toml"; fi
ctr_images

cat > "$WORK/inner.sh" <<'INNER'
set -uo pipefail
WORK=$1; CRIBIN=$2; NET=$3; PREFIX=$4; MASK=$5; SUITE=$6; STACK=$7
. tests/containerd/lib.sh
[ -z "$STACK" ] || PATH=$STACK:$PATH
HFSTATE=$WORK/var-lib-cni/holdfast
GW=$PREFIX.1
in_mounts
containerd --config "$WORK/config.toml" >"$WORK/containerd.log" 2>&1 &
CPID=$!
in_await_containerd && ok "containerd $(containerd --version | awk '{print $3}') up in the node netns" || { bad "containerd did not start"; tail "$WORK/containerd.log"; exit 1; }
ctr images import "$WORK/busybox.tar" >/dev/null 2>&1 && ok "busybox image imported offline" || bad "ctr images import"

ctr run --rm --cni docker.io/hf/busybox:e2e c1 sh -c \
  "ip -4 -o addr show eth0; ping -c1 -W2 $GW >/dev/null && echo POD-PINGS-NODE; sleep 4" >"$WORK/c1.out" 2>&1 &
RUN=$!
rec="$HFSTATE/attachments/$NET/e2e-c1@eth0.json"
for _ in $(seq 1 100); do [ -f "$rec" ] && break; sleep 0.1; done
ipaddr=$(grep -o "\"$PREFIX\.[0-9]*\"" "$rec" 2>/dev/null | head -1 | tr -d '"')
if [ -n "$ipaddr" ]; then ok "ADD from ctr: the container got $ipaddr"; else bad "no attachment record for the container ($(ls "$HFSTATE/attachments/$NET" 2>&1))"; fi
sleep 1
ping -c1 -W2 "$ipaddr" >/dev/null 2>&1 && ok "the node pings the container at $ipaddr" || bad "the node cannot ping $ipaddr"
wait "$RUN"
grep -q POD-PINGS-NODE "$WORK/c1.out" && ok "the container pings the node ($GW)" || bad "container output: $(cat "$WORK/c1.out")"
grep -q "inet $ipaddr/$MASK" "$WORK/c1.out" && ok "inside the container eth0 has $ipaddr/$MASK" || bad "container eth0: $(head -1 "$WORK/c1.out")"
left_links=$(ip -o link | grep -c ': hf')
left_recs=$(ls "$HFSTATE/attachments/$NET" 2>/dev/null | wc -l)
left_leases=$(ls "$HFSTATE/ipam/$NET" 2>/dev/null | grep -c '^10\.')
if [ "$left_links$left_recs$left_leases" = 000 ]; then ok "after exit ctr ran DEL: no link, record or lease left"
else bad "left after exit: $left_links links, $left_recs records, $left_leases leases"; fi

# ---- CRI: what the kubelet does for a pod with bandwidth annotations ----
ctr -n k8s.io images import "$WORK/pause.tar" >/dev/null 2>&1 && ok "pause image imported into k8s.io" || bad "ctr -n k8s.io images import pause"
SB=$(cri run web-0 e2e-ns 2f9c7a1e-e2e kubernetes.io/ingress-bandwidth=10M kubernetes.io/egress-bandwidth=20M 2>"$WORK/cri.err")
if [ -n "$SB" ]; then ok "RunPodSandbox: sandbox ${SB:0:12}"; else bad "RunPodSandbox: $(cat "$WORK/cri.err")"; tail -5 "$WORK/containerd.log"; fi
podip=$(cri ip "$SB" 2>&1)
case "$podip" in "$PREFIX".*) ok "PodSandboxStatus: the pod got $podip from holdfast";; *) bad "PodSandboxStatus: $podip";; esac
ping -c1 -W2 "$podip" >/dev/null 2>&1 && ok "the node pings the pod at $podip" || bad "the node cannot ping $podip"
add=$(calls "$SB" ADD | head -1)
if [ -n "$add" ] && grep -q '"IngressRate":10000000' "$add.stdin" && grep -q '"IngressBurst":4294967295' "$add.stdin" \
   && grep -q '"EgressRate":20000000' "$add.stdin" && grep -q '"EgressBurst":4294967295' "$add.stdin"; then
  ok "containerd sent runtimeConfig.bandwidth with capitalised keys and 4294967295-bit bursts"
else bad "ADD stdin: $(cat "$add.stdin" 2>&1)"; fi
args=$(grep '^CNI_ARGS=' "$add.env" 2>/dev/null)
if grep -q 'IgnoreUnknown=1' <<<"$args" && grep -q 'K8S_POD_NAME=web-0' <<<"$args"; then ok "CNI_ARGS from CRI accepted: ${args#CNI_ARGS=}"
else bad "CNI_ARGS: $args"; fi
# Read back with tc (holdfast itself never runs tc): 100 ms at the rate, not a 512 MiB bucket.
qd=$(tc qdisc show)
if echo "$qd" | grep -Eq 'tbf 1: dev hf[0-9a-f]{11} root .*rate 10Mbit burst 125000b' \
   && echo "$qd" | grep -Eq 'tbf 1: dev hfi[0-9a-f]{11} root .*rate 20Mbit burst 250000b'; then
  ok "limits applied: ingress tbf 10Mbit burst 125000b on the veth, egress tbf 20Mbit burst 250000b on the ifb"
else bad "qdiscs: $qd"; fi
# The unspecified burst keeps the pod honest (the reference plugin lets it send ~300 Mbit/s).
podns=$(grep '^CNI_NETNS=' "$add.env" 2>/dev/null | cut -d= -f2)
iperf3 -s -1 -p 5202 >/dev/null 2>&1 &
IPERF=$!
sleep 0.3
mbit=$(nsenter --net="$podns" iperf3 -c "$GW" -p 5202 -t 5 -R -J 2>/dev/null | grep -A8 '"sum_received"' \
  | grep -m1 '"bits_per_second"' | grep -oE '[0-9.]+(e[+-]?[0-9]+)?' | awk '{printf "%.2f", $1/1e6}')
kill "$IPERF" 2>/dev/null; wait "$IPERF" 2>/dev/null
if [ -n "$mbit" ] && awk -v m="$mbit" 'BEGIN {exit !(m > 0 && m <= 11)}'; then ok "iperf3 into the pod over 5 s: $mbit Mbit/s at a 10M annotation"
else bad "iperf3 into the pod: '$mbit' Mbit/s at a 10M annotation"; fi
# The kubelet stops a sandbox more than once; containerd 1.6 runs DEL each time.
cri stop "$SB" 2>"$WORK/cri.err" && ok "StopPodSandbox" || bad "StopPodSandbox: $(cat "$WORK/cri.err")"
cri stop "$SB" 2>"$WORK/cri.err" && ok "StopPodSandbox again" || bad "second StopPodSandbox: $(cat "$WORK/cri.err")"
cri remove "$SB" 2>"$WORK/cri.err" && ok "RemovePodSandbox" || bad "RemovePodSandbox: $(cat "$WORK/cri.err")"
dels=$(calls "$SB" DEL)
ndel=$(echo "$dels" | grep -c .)
nok=0; for d in $dels; do [ "$(cat "$d.rc" 2>/dev/null)" = 0 ] && nok=$((nok+1)); done
bare=0; for d in $dels; do grep -q prevResult "$d.stdin" || bare=$((bare+1)); done
if [ "$ndel" -ge 2 ] && [ "$nok" = "$ndel" ]; then ok "containerd ran DEL $ndel times ($bare without prevResult), every one exit 0"
else bad "DELs: $ndel, succeeded: $nok"; fi
left_links=$(ip -o link | grep -c ': hf')
left_qd=$(tc qdisc show | grep -c 'dev hf')
left_recs=$(ls "$HFSTATE/attachments/$NET" 2>/dev/null | wc -l)
left_leases=$(ls "$HFSTATE/ipam/$NET" 2>/dev/null | grep -c '^10\.')
left_sb=$(cri list 2>&1 | grep -c .)
if [ "$left_links$left_qd$left_recs$left_leases$left_sb" = 00000 ]; then ok "after the sandbox is removed: no link, ifb, qdisc, record, lease or sandbox left"
else bad "left after RemovePodSandbox: $left_links links, $left_qd qdiscs, $left_recs records, $left_leases leases, $left_sb sandboxes"; fi

# ---- the CNI version each runtime picks, and STATUS ----
add1=$(ls "$WORK/calls" | grep '\.ADD\.stdin$' | head -1)
used=$(grep -o '"cniVersion": *"[0-9.]*"' "$WORK/calls/$add1" 2>/dev/null | head -1 | tr -d '"' | grep -o '[0-9][0-9.]*$')
want=1.0.0; [ -z "$STACK" ] || want=1.1.0
[ "$used" = "$want" ] && ok "containerd $(containerd --version | awk '{print $3}') ran the conflist at cniVersion $used" \
  || bad "cniVersion sent: '$used', expected $want"
nstatus() { ls "$WORK/calls" | grep -c '\.STATUS\.env$'; }
before=$(nstatus)
ready=$(cri status 2>&1)
after=$(nstatus)
if [ -z "$STACK" ]; then
  [ "$ready" = NetworkReady=true ] && [ "$after" = 0 ] && ok "CRI Status: $ready, and holdfast never got STATUS" \
    || bad "CRI Status: '$ready', $after STATUS calls"
else
  st=$(ls "$WORK/calls" | grep '\.STATUS\.env$' | tail -1); st=$WORK/calls/${st%.env}
  if [ "$ready" = NetworkReady=true ] && [ "$after" -gt "$before" ] && [ "$(cat "$st.rc" 2>/dev/null)" = 0 ] \
     && ! grep -q '^CNI_CONTAINERID=.' "$st.env" && grep -q '"cniVersion": *"1.1.0"' "$st.stdin"; then
    ok "CRI Status ran holdfast's STATUS (1.1.0, no container): $ready"
  else bad "CRI Status: '$ready', STATUS calls $before -> $after, last rc $(cat "$st.rc" 2>&1)"; fi
fi
# The conflist in place, rewritten (containerd watches the directory and reloads it).
CONF=/etc/cni/net.d/$(ls /etc/cni/net.d | head -1)
cp "$CONF" "$WORK/shipped.conflist"
reconf() { sed "s#\"subnet\": *\"[0-9./]*\"#\"subnet\": \"$1\"#" "$WORK/shipped.conflist" > "$WORK/next.conflist" && cp "$WORK/next.conflist" "$CONF"; }
# Polls CRI Status until it says $1 (a prefix), 20 s at most; prints the last answer.
await_ready() { local r; for _ in $(seq 1 40); do r=$(cri status 2>&1); case $r in "$1"*) break;; esac; sleep 0.5; done; echo "$r"; }
if [ -n "$STACK" ]; then
  reconf 10.85.0.0/33
  r=$(await_ready NetworkReady=false)
  case $r in *"IPAM is not usable"*10.85.0.0/33*) ok "invalid config: $r";; *) bad "invalid config: CRI Status says '$r'";; esac
  cp "$WORK/shipped.conflist" "$CONF"
  r=$(await_ready NetworkReady=true)
  [ "$r" = NetworkReady=true ] && ok "config restored: $r" || bad "config restored: CRI Status says '$r'"
  # A /30 holds one pod (.1 is the gateway). With it live the range is full; the next pod's ADD
  # fails naming the range, and the node must stay Ready (NotReady would evict the holder).
  reconf 10.85.0.0/30
  sleep 2
  SBA=$(cri run full-0 e2e-ns 5a1c0f00-e2e 2>"$WORK/cri.err")
  [ -n "$SBA" ] && ok "a /30 range: pod full-0 got $(cri ip "$SBA" 2>&1)" || bad "RunPodSandbox full-0: $(cat "$WORK/cri.err")"
  SBB=$(cri run full-1 e2e-ns 5a1c0f01-e2e 2>"$WORK/cri.err")
  if [ -z "$SBB" ] && grep -q 'no free address in ipam.ranges\[0\]' "$WORK/cri.err"; then
    ok "range full: the next pod's ADD fails naming it ($(grep -o 'no free address[^"]*' "$WORK/cri.err" | head -1))"
  else bad "RunPodSandbox full-1 on a full range: '$SBB' $(cat "$WORK/cri.err")"; fi
  r=$(cri status 2>&1); sleep 3; r2=$(cri status 2>&1)
  [ "$r$r2" = NetworkReady=trueNetworkReady=true ] && ok "range full of live pods: the node stays $r" \
    || bad "range full of live pods: CRI Status says '$r2' (SPEC §4 STATUS rule)"
  for sb in $SBA $SBB; do cri stop "$sb" 2>/dev/null; cri remove "$sb" 2>/dev/null; done
  cp "$WORK/shipped.conflist" "$CONF"
  r=$(await_ready NetworkReady=true)
  [ "$r" = NetworkReady=true ] && [ -z "$(cri list 2>&1)" ] && ok "pods removed, config restored: $r" \
    || bad "after the full range: '$r', sandboxes: $(cri list 2>&1 | tr '\n' ' ')"
fi

kill "$CPID"; wait "$CPID" 2>/dev/null
echo "$SUITE e2e: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
INNER
ctr_enter "$WORK/inner.sh" "$WORK" "$CRI" "$NET" "$PREFIX" "$MASK" "$SUITE" "$STACK"
