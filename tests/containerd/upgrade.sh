#!/usr/bin/env bash
# An operator upgrades a node's runtime in place under running pods: Debian 12's containerd 1.6
# is stopped the way a package upgrade stops it (SIGTERM: the shims and the pods keep running), the
# stack's containerd 2.x starts on the same root, state and CNI directories (its version 3 config),
# and the reference plugins are upgraded with it (1.1.1 -> the stack's 1.9.1: 1.1.1 cannot run a
# 1.1.0 config). holdfast's binary and conf/10-holdfast-portmap.conflist (cniVersion 1.0.0 with
# cniVersions ["1.0.0", "1.1.0"]) stay as they are.
#   Under 1.6: two pods (one with a container serving TCP) get addresses from a 1.0.0 ADD and
#   answer from the node.
#   Under 2.x: the old pods are still listed, Running and reachable; CRI Status runs holdfast's
#   STATUS at 1.1.0 and is NetworkReady=true; a new pod's ADD runs at 1.1.0; stopping and removing
#   the old pods succeeds (libcni converts their cached 1.0.0 result; containerd 1.6 cannot) and
#   so does the new one's, each leaving no veth, lease or record; at the end nothing of holdfast's
#   is left.
# The node, its runtime and its pods live in a private netns and mount namespace as in
# tests/containerd/run.sh (whose helpers, tests/containerd/lib.sh, this shares).
# Usage (root): tests/containerd/upgrade.sh STACK_BIN_DIR (tests/stack/build.sh prints it).
# Prints "containerd-upgrade e2e: N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/containerd/lib.sh
[ -n "${1:-}" ] || { echo "usage: $0 STACK_BIN_DIR" >&2; exit 2; }
ctr_tools
ctr_stack "$1"

ctr_world hfupg
# Whatever a failed run leaves running is this run's: containerd (pids recorded), the containers
# (runc's state, here under $WORK) and their shims (their command line names this run's socket).
cleanup_upgrade() {
  local p f d
  for p in $(cat "$WORK/pids" 2>/dev/null); do
    grep -qF "$WORK/" "/proc/$p/cmdline" 2>/dev/null && kill -9 "$p"
  done
  for d in "$WORK"/run-containerd/runc/*/; do
    for f in "$d"*/; do [ -d "$f" ] && runc --root "$d" delete --force "$(basename "$f")" 2>/dev/null; done
  done
  for p in $(ctr_shim_pids); do kill -9 "$p"; done
  cleanup
}
trap cleanup_upgrade EXIT
ctr_plugins /usr/lib/cni
ctr_conflist
ctr_config_v2 "$WORK/config-1.6.toml"
ctr_config_v3 "$WORK/config-2.toml"
ctr_images

cat > "$WORK/inner.sh" <<'INNER'
set -uo pipefail
WORK=$1; CRIBIN=$2; NET=$3; PREFIX=$4; STACK=$5; PLUGINS2=$6
. tests/containerd/lib.sh
HFSTATE=$WORK/var-lib-cni/holdfast
in_mounts
# Starts containerd binary $1 with config $2; sets CPID.
start() {
  "$1" --config "$2" >>"$WORK/containerd.log" 2>&1 &
  CPID=$!
  echo "$CPID" >> "$WORK/pids"
  in_await_containerd
}
# The cniVersion of the conflist holdfast got in call $1 (a path without extension).
version_of() { grep -o '"cniVersion": *"[0-9.]*"' "$1.stdin" 2>/dev/null | head -1 | grep -o '[0-9][0-9.]*"$' | tr -d '"'; }
# The pod's sandbox is ready, its IP is $2 (a recovered sandbox keeps it), the node pings it.
alive() {
  local st ip
  st=$(cri state "$1" 2>&1); ip=$(cri ip "$1" 2>&1)
  if [ "$st" = SANDBOX_READY ] && [ "$ip" = "$2" ] && ping -c1 -W2 "$2" >/dev/null 2>&1; then
    ok "$3: pod ${1:0:12} is $st at $2 and answers ping"
  else bad "$3: pod ${1:0:12}: state '$st', ip '$ip' (was $2), ping $(ping -c1 -W2 "$2" >/dev/null 2>&1 && echo ok || echo failed)"; fi
}
# The container in web-0 answers TCP with its pod's hostname.
serves() {
  local r
  r=$(busybox nc -w 3 "$1" 8080 </dev/null 2>&1)
  [ "$r" = web-0 ] && ok "$2: the container in web-0 answers TCP on $1:8080 ('$r')" \
    || bad "$2: TCP to $1:8080 answered '$r'"
}
# Stops (twice, as the kubelet does) and removes pod $1 whose IP was $2; every DEL must succeed,
# the first with the pod's result as prevResult at 1.1.0, and the pod's veth, lease and record
# must be gone.
teardown() {
  local sb=$1 ip=$2 what=$3 rec veth dels ndel nok first
  rec=$HFSTATE/attachments/$NET/$sb@eth0.json
  veth=$(grep -o '"hostIfname": *"hf[0-9a-f]*"' "$rec" 2>/dev/null | grep -o 'hf[0-9a-f]*')
  if cri stop "$sb" 2>"$WORK/cri.err" && cri stop "$sb" 2>>"$WORK/cri.err" && cri remove "$sb" 2>>"$WORK/cri.err"; then
    ok "$what: StopPodSandbox twice and RemovePodSandbox succeed"
  else bad "$what: $(cat "$WORK/cri.err")"; fi
  dels=$(calls "$sb" DEL)
  ndel=$(echo "$dels" | grep -c .)
  nok=0; for d in $dels; do [ "$(cat "$d.rc" 2>/dev/null)" = 0 ] && nok=$((nok+1)); done
  first=$(echo "$dels" | head -1)
  if [ "$ndel" -ge 1 ] && [ "$nok" = "$ndel" ] && [ "$(version_of "$first")" = 1.1.0 ] \
     && grep -q "\"prevResult\".*\"$ip/" "$first.stdin"; then
    ok "$what: $ndel DELs at 1.1.0, every one exit 0; the first carried the cached result (prevResult with $ip)"
  else bad "$what: DELs $ndel, succeeded $nok, first at '$(version_of "$first")': $(cat "$first.stdin" 2>&1 | head -c 600)"; fi
  local left=""
  [ -n "$veth" ] || left="$left no veth name in the record before teardown;"
  [ -z "$veth" ] || ! ip link show "$veth" >/dev/null 2>&1 || left="$left veth $veth;"
  [ ! -e "$rec" ] || left="$left record;"
  [ ! -e "$HFSTATE/ipam/$NET/$ip" ] || left="$left lease $ip;"
  cri list 2>&1 | grep -q "^$sb\$" && left="$left sandbox;"
  [ -z "$left" ] && ok "$what: nothing left (veth $veth, lease $ip, record, sandbox gone)" || bad "$what: left behind:$left"
}

# ---- containerd 1.6, as Debian 12 ships it ----
start containerd "$WORK/config-1.6.toml" && ok "containerd $(containerd --version | awk '{print $3}') up in the node netns" \
  || { bad "containerd 1.6 did not start"; tail "$WORK/containerd.log"; exit 1; }
command ctr -a "$WORK/containerd.sock" -n k8s.io images import "$WORK/pause.tar" >/dev/null 2>&1 \
  && command ctr -a "$WORK/containerd.sock" -n k8s.io images import "$WORK/busybox.tar" >/dev/null 2>&1 \
  && ok "pause and busybox images imported into k8s.io" || bad "ctr -n k8s.io images import"
SBA=$(cri run web-0 e2e-ns 0a1d0000-upg 2>"$WORK/cri.err") || bad "RunPodSandbox web-0: $(cat "$WORK/cri.err")"
CID=$(cri create "$SBA" web-0 e2e-ns 0a1d0000-upg docker.io/hf/busybox:e2e nc -ll -p 8080 -e hostname 2>"$WORK/cri.err") \
  && cri start "$CID" 2>>"$WORK/cri.err" || bad "container in web-0: $(cat "$WORK/cri.err")"
SBB=$(cri run idle-0 e2e-ns 0a1d0001-upg 2>"$WORK/cri.err") || bad "RunPodSandbox idle-0: $(cat "$WORK/cri.err")"
IPA=$(cri ip "$SBA" 2>&1); IPB=$(cri ip "$SBB" 2>&1)
case "$IPA $IPB" in "$PREFIX".*" $PREFIX".*) ok "two pods: web-0 got $IPA (with a container), idle-0 got $IPB";;
  *) bad "pod addresses: web-0 '$IPA', idle-0 '$IPB'"; tail -5 "$WORK/containerd.log";; esac
va=$(version_of "$(calls "$SBA" ADD | head -1)"); vb=$(version_of "$(calls "$SBB" ADD | head -1)")
[ "$va$vb" = 1.0.01.0.0 ] && ok "containerd 1.6 ran both ADDs at cniVersion 1.0.0" || bad "ADD versions under 1.6: '$va' '$vb'"
sleep 0.5
alive "$SBA" "$IPA" "under 1.6"
alive "$SBB" "$IPB" "under 1.6"
serves "$IPA" "under 1.6"

# ---- the upgrade: SIGTERM, as the package's stop does; the shims and the pods stay ----
kill -TERM "$CPID"; wait "$CPID" 2>/dev/null
shims=$(ctr_shim_pids | wc -l)
pa=failed; ping -c1 -W2 "$IPA" >/dev/null 2>&1 && pa=ok
pb=failed; ping -c1 -W2 "$IPB" >/dev/null 2>&1 && pb=ok
if ! kill -0 "$CPID" 2>/dev/null && [ "$shims" -ge 2 ] && [ "$pa$pb" = okok ]; then
  ok "containerd 1.6 stopped by SIGTERM: $shims shims still running, both pods answer ping with no runtime"
else bad "after SIGTERM: containerd $(kill -0 "$CPID" 2>/dev/null && echo alive || echo gone), $shims shims, ping web-0 $pa, idle-0 $pb"; fi
cp "$PLUGINS2"/{loopback,host-local,portmap,bandwidth} /opt/cni/bin/ && ok "reference plugins in /opt/cni/bin upgraded to the stack's ($PLUGINS2)" \
  || bad "copying the plugins of $PLUGINS2"
export PATH=$STACK:$PATH
start "$STACK/containerd" "$WORK/config-2.toml" \
  && ok "containerd $("$STACK/containerd" --version | awk '{print $3}') up on the same root, state and CNI directories" \
  || { bad "containerd 2.x did not start"; tail -20 "$WORK/containerd.log"; exit 1; }

# ---- containerd 2.x: the pods made under 1.6 ----
listed=$(cri list 2>&1)
grep -q "^$SBA\$" <<<"$listed" && grep -q "^$SBB\$" <<<"$listed" && ok "both pods of 1.6 are listed by 2.x" \
  || bad "ListPodSandbox under 2.x: $(tr '\n' ' ' <<<"$listed")"
alive "$SBA" "$IPA" "under 2.x"
alive "$SBB" "$IPB" "under 2.x"
cs=$(cri cstate "$CID" 2>&1)
[ "$cs" = CONTAINER_RUNNING ] && ok "under 2.x: the container of web-0 is $cs" || bad "under 2.x: container state '$cs'"
serves "$IPA" "under 2.x"
nstatus() { ls "$WORK/calls" | grep -c '\.STATUS\.env$'; }
before=$(nstatus)
ready=$(cri status 2>&1)
st=$(ls "$WORK/calls" | grep '\.STATUS\.env$' | tail -1); st=$WORK/calls/${st%.env}
if [ "$ready" = NetworkReady=true ] && [ "$(nstatus)" -gt "$before" ] && [ "$(cat "$st.rc" 2>/dev/null)" = 0 ] \
   && [ "$(version_of "$st")" = 1.1.0 ]; then
  ok "CRI Status ran holdfast's STATUS at 1.1.0: $ready"
else bad "CRI Status: '$ready', STATUS calls $before -> $(nstatus), last at '$(version_of "$st")' rc $(cat "$st.rc" 2>&1)"; fi

# ---- a new pod under 2.x ----
SBC=$(cri run new-0 e2e-ns 0a1d0002-upg 2>"$WORK/cri.err") || bad "RunPodSandbox new-0: $(cat "$WORK/cri.err")"
IPC=$(cri ip "$SBC" 2>&1)
case "$IPC" in "$IPA"|"$IPB") bad "new-0 got $IPC, an address a running pod holds";;
  "$PREFIX".*) ok "a new pod under 2.x: new-0 got $IPC (the leases of 1.6's pods kept)";;
  *) bad "new-0: '$IPC'";; esac
add=$(calls "$SBC" ADD | head -1)
[ -n "$add" ] && [ "$(version_of "$add")" = 1.1.0 ] && grep -q '^CNI_COMMAND=ADD$' "$add.env" && [ "$(cat "$add.rc")" = 0 ] \
  && ok "new-0's CNI call: CNI_COMMAND=ADD, cniVersion $(version_of "$add"), exit 0" \
  || bad "new-0's ADD: '$(grep CNI_COMMAND "$add.env" 2>&1)' at '$(version_of "$add")'"
alive "$SBC" "$IPC" "under 2.x"

# ---- teardown under 2.x: 1.6's pods (cached 1.0.0 results), then the new one ----
teardown "$SBB" "$IPB" "idle-0 (made by 1.6)"
teardown "$SBA" "$IPA" "web-0 (made by 1.6, with a container)"
teardown "$SBC" "$IPC" "new-0 (made by 2.x)"
left_links=$(ip -o link | grep -c ': hf')
left_qd=$(tc qdisc show | grep -c 'dev hf')
left_recs=$(ls "$HFSTATE/attachments/$NET" 2>/dev/null | wc -l)
left_leases=$(ls "$HFSTATE/ipam/$NET" 2>/dev/null | grep -c '^10\.')
left_cache=$(ls /var/lib/cni/results 2>/dev/null | grep -c "^$NET-")
left_sb=$(cri list 2>&1 | grep -c .)
left_ns=$(ls /var/run/netns | wc -l)
shims=$(ctr_shim_pids | wc -l)
if [ "$left_links$left_qd$left_recs$left_leases$left_cache$left_sb$left_ns$shims" = 00000000 ]; then
  ok "at the end: no link, qdisc, record, lease, cached result, sandbox, pod netns or shim left"
else bad "left at the end: $left_links links, $left_qd qdiscs, $left_recs records, $left_leases leases, $left_cache cached results, $left_sb sandboxes, $left_ns netns, $shims shims"; fi
failed=$(grep -l -v '^0$' "$WORK"/calls/*.rc 2>/dev/null | wc -l)
[ "$failed" = 0 ] && ok "every one of holdfast's $(ls "$WORK"/calls/*.rc | wc -l) calls exited 0 across the upgrade" \
  || bad "$failed of holdfast's calls failed: $(grep -l -v '^0$' "$WORK"/calls/*.rc | xargs -n1 basename | tr '\n' ' ')"

kill "$CPID"; wait "$CPID" 2>/dev/null
echo "containerd-upgrade e2e: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
INNER
ctr_enter "$WORK/inner.sh" "$WORK" "$CRI" "$NET" "$PREFIX" "$STACK" "$PLUGINS2"
