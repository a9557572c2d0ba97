# Sourced by tests/kubernetes/run.sh: SPEC §4's STATUS rule on the cluster (issue 17). containerd
# 2.x runs CNI STATUS on every CRI Status poll of the kubelet (every 5 s), and the Node's Ready
# condition follows the NetworkReady it answers. On node-1:
#   outage: holdfast cut from the API by every path it knows (the VIP and the apiserver's real
#     address 10.44.0.5) for a minute while the kubelet and kube-proxy still reach it by their own
#     (10.44.0.6): the node stays Ready throughout, and STATUS ran and answered 0 all along (its
#     execs by node-1's containerd, seen by strace).
#   no cluster info: the same cut with the cluster-info cache moved aside: NotReady with
#     holdfast's STATUS message; the cache back and the API reachable: Ready again.
#   full range: node-1's podCIDR (a /26, --node-cidr-mask-size in cluster.sh) filled with pods;
#     one more pod fails with holdfast's "no free address" naming the range while the node stays
#     Ready; one pod fewer and it starts.

STATUS_API="10.43.0.1 10.44.0.5"
cut_holdfast() { local a; for a in $STATUS_API; do block_on 1 "$a"; done; }
uncut_holdfast() { local a; for a in $STATUS_API; do unblock_on 1 "$a"; done; }
ready_of() { # FIELD of node-1's Ready condition (status, message)
  kc get node node-1 -o jsonpath="{.status.conditions[?(@.type==\"Ready\")].$1}"
}
# A TCP connect from node-1 to $1 port $2 within 3 s.
connects() { in_n 1 timeout 3 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }
# node-1's containerd, by the config only it is started with.
ctrd_pid() {
  local p
  for p in /proc/[0-9]*; do
    case $(tr '\0' ' ' < "$p/cmdline" 2>/dev/null) in
      "containerd --config $W/n1/containerd.toml "*) echo "${p#/proc/}"; return;;
    esac
  done
}

# strace on node-1's containerd for its execs (and their exits): started, then stopped by PID.
trace_start() {
  local c; c=$(ctrd_pid)
  [ -n "$c" ] || { echo "node-1's containerd not found" > "$W/status.strace.err"; return 1; }
  strace -f -q -v -s 200 -e trace=execve -e signal=none -o "$W/status.strace" -p "$c" 2>"$W/status.strace.err" &
  STRACE=$!
  PIDS+=("$STRACE")
  traced() { grep -q '^TracerPid:[[:space:]]*[1-9]' "/proc/$c/status"; }
  wait_for 20 traced || { echo "strace not attached to $c in 20 s" >> "$W/status.strace.err"; trace_stop; return 1; }
}
trace_stop() { stop_pid "$STRACE"; }
# "CALLS OK" of holdfast's STATUS execs in the trace: how many, how many exited 0.
status_calls() {
  local f="$W/status.strace" pids p calls=0 zero=0
  pids=$(grep 'execve("/opt/cni/bin/holdfast"' "$f" | grep '"CNI_COMMAND=STATUS"' | awk '{print $1}')
  for p in $pids; do
    calls=$((calls+1))
    # (strace pads a PID to five columns: "4567  +++ exited ...".)
    awk -v p="$p" '$1 == p && /\+\+\+ exited with 0 \+\+\+/ {f = 1} END {exit !f}' "$f" && zero=$((zero+1))
  done
  echo "$calls $zero"
}

lease_renewed() { kc -n kube-node-lease get lease node-1 -o jsonpath='{.spec.renewTime}' 2>/dev/null; }
status_outage() {
  local lease0 lease1 end samples=0 notready=0 calls zero paths
  trace_start || { bad "could not trace node-1's containerd: $(cat "$W/status.strace.err" 2>/dev/null)"; return; }
  lease0=$(lease_renewed); [ -n "$lease0" ] || { sleep 2; lease0=$(lease_renewed); }
  cut_holdfast
  end=$(( $(date +%s) + 60 ))
  paths="VIP $(connects 10.43.0.1 443 && echo open || echo cut), 10.44.0.5 $(connects 10.44.0.5 6443 && echo open || echo cut), kubelet's 10.44.0.6 $(connects 10.44.0.6 6443 && echo open || echo cut)"
  while [ "$(date +%s)" -lt "$end" ]; do
    samples=$((samples+1))
    [ "$(ready_of status)" = True ] || notready=$((notready+1))
    sleep 1
  done
  lease1=$(lease_renewed)
  uncut_holdfast
  trace_stop
  read -r calls zero <<<"$(status_calls)"
  [ "$paths" = "VIP cut, 10.44.0.5 cut, kubelet's 10.44.0.6 open" ] && [ -n "$lease0" ] && [ "$lease1" != "$lease0" ] \
    && ok "holdfast cut from the API on node-1 for 60 s ($paths; the kubelet renewed its lease)" \
    || bad "the cut: $paths; lease renewed $lease0 -> $lease1"
  [ "$notready" = 0 ] && [ "$calls" -ge 6 ] && [ "$zero" = "$calls" ] \
    && ok "API outage with a cache: node-1 Ready in all $samples polls over 60 s; containerd ran holdfast's STATUS $calls times, each exit 0" \
    || bad "API outage with a cache: NotReady in $notready of $samples polls; STATUS ran $calls times, $zero exit 0"
}

status_no_info() {
  local hf="$W/n1/var-lib-cni/holdfast" aside="$W/cluster-info.aside" t0 msg took
  cut_holdfast
  mv "$hf/cluster-info.json" "$aside" || { uncut_holdfast; bad "no cluster-info cache on node-1 to move aside"; return; }
  t0=$(date +%s)
  not_ready_holdfast() { [ "$(ready_of status)" = False ] && ready_of message | grep -q 'node podCIDRs unknown'; }
  if wait_for 90 not_ready_holdfast; then
    took=$(( $(date +%s) - t0 )); msg=$(ready_of message)
    ok "no cluster info (cache moved aside, API cut): node-1 NotReady ${took} s later with holdfast's STATUS error: ${msg:0:300}"
  else bad "no cluster info: Ready '$(ready_of status)' after 90 s: $(ready_of message)"; fi
  mv "$aside" "$hf/cluster-info.json"
  uncut_holdfast
  t0=$(date +%s)
  if wait_for 90 node_ready 1; then ok "the cache back and the API reachable: node-1 Ready again $(( $(date +%s) - t0 )) s later"
  else bad "node-1 not Ready again: $(ready_of message)"; fi
}

# holdfast's own view of node-1's range: "USED CAPACITY RANGE" from its doctor in the agent.
range_usage() {
  local agent
  agent=$(kc -n kube-system get pods -l app=holdfast --field-selector spec.nodeName=node-1 -o jsonpath='{.items[0].metadata.name}')
  kc -n kube-system exec "$agent" -c agent -- /holdfast doctor --conf /etc/cni/net.d/10-holdfast-k8s.conflist --json 2>/dev/null \
    | tr -d '\n' | grep -o '"ipam": *\[ *{[^]}]*' | head -1 \
    | sed 's/.*"range": *"\([^"]*\)".*"used": *\([0-9]*\).*"capacity": *\([0-9]*\).*/\2 \3 \1/'
}
extra_pod_manifest() {
  cat <<YAML
apiVersion: v1
kind: Pod
metadata: {name: extra, labels: {app: extra}}
spec:
  terminationGracePeriodSeconds: 1
  nodeSelector: {kubernetes.io/hostname: node-1}
  containers:
    - {name: extra, image: docker.io/hf/busybox:e2e, imagePullPolicy: Never, command: ["sleep", "100000"]}
YAML
}

status_full_range() {
  local range used cap free t0 ev end samples=0 notready=0 cidr
  cidr=$(kc get node node-1 -o jsonpath='{.spec.podCIDR}')
  read -r used cap range <<<"$(range_usage)"
  [ -n "$cap" ] || { bad "holdfast doctor on node-1 gave no range usage"; return; }
  free=$(( cap - used ))
  t0=$(date +%s)
  sleepers_on_node1 fill "$free" | kc apply -f - >"$W/fill.out" 2>&1 || { bad "fill: $(cat "$W/fill.out")"; return; }
  if wait_for 150 all_running app=fill "$free"; then
    read -r used _ <<<"$(range_usage)"
    ok "node-1's podCIDR $cidr, holdfast's range $range, filled: $free more pods Running in $(( $(date +%s) - t0 )) s, holdfast counts $used of $cap addresses used"
  else bad "fill: $(pods app=fill | awk '{print $4}' | sort | uniq -c | tr '\n' ' ')of $free"; fi
  extra_pod_manifest | kc apply -f - >"$W/fill.out" 2>&1 || bad "extra pod: $(cat "$W/fill.out")"
  sandbox_events() {
    kc get events --field-selector involvedObject.name=extra,reason=FailedCreatePodSandBox -o jsonpath='{range .items[*]}{.message}{"\n"}{end}'
  }
  names_range() { sandbox_events | grep 'no free address' | grep -qF "$cidr"; }
  if wait_for 60 names_range; then
    ev=$(sandbox_events | grep 'no free address' | tail -1)
    ok "the extra pod on a full range: $(pods app=extra | awk '{print $4}'), FailedCreatePodSandBox: ...${ev: -160}"
  else bad "no FailedCreatePodSandBox naming $cidr for the extra pod: $(sandbox_events | tail -1) ($(pods app=extra))"; fi
  end=$(( $(date +%s) + 30 ))
  while [ "$(date +%s)" -lt "$end" ]; do
    samples=$((samples+1))
    [ "$(ready_of status)" = True ] || notready=$((notready+1))
    sleep 1
  done
  [ "$notready" = 0 ] && ok "the range full of live pods: node-1 Ready in all $samples polls over 30 s" \
    || bad "the range full: node-1 NotReady in $notready of $samples polls: $(ready_of message)"
  kc scale deployment fill --replicas=$(( free - 1 )) >/dev/null 2>&1
  t0=$(date +%s)
  if wait_for 90 all_running app=extra 1; then ok "one fill pod fewer: the extra pod Running $(( $(date +%s) - t0 )) s later ($(pods app=extra | awk '{print $3}'))"
  else bad "the extra pod after the scale-down: $(pods app=extra)"; fi
  kc delete deployment fill --wait=false >/dev/null 2>&1; kc delete pod extra --wait=false >/dev/null 2>&1
  gone() { [ -z "$(kc get pods -l 'app in (fill,extra)' -o name 2>/dev/null)" ]; }
  web1() { pods app=web | awk '$2 == "node-1"' | wc -l; }
  leases_back() { [ "$(node_state 1 | cut -d' ' -f2)" = "$(web1)" ]; }
  wait_for 120 gone && wait_for 60 leases_back || bad "after the fill: pods $(kc get pods -l 'app in (fill,extra)' -o name | wc -l) left, node-1 (links leases records netns) $(node_state 1)"
}

checks_status() {
  status_outage
  status_no_info
  status_full_range
}
