# Sourced by tests/kubernetes/run.sh: the incident's night on node-1.
#   cold: every process of the node killed at once, /run emptied (pod netns and links gone with
#     the namespaces), the node's network made afresh, the VIP black-holed in raw OUTPUT and
#     PREROUTING (connects time out) and kube-proxy not started: its rules never come back. The
#     kubelet reaches the apiserver by its own address (10.44.0.6), as on RKE2. The node stays
#     down until its cluster-info cache is older than refreshSeconds, so ADD has to try the API.
#   cut-off: the API unreachable by every path (VIP, real address, the kubelet's own) for a
#     minute while the kubelet replaces every sandbox of the node (their pause processes killed)
#     from its own state: once with the agent's cache fresh, once after it turned stale.
# Prints one table row per phase: pods, time to all Running (the last pod container start that
# containerd logged), CNI ADD p50/p99 as containerd timed them (its debug log), failures (failed
# sandbox setups and network teardowns in containerd's log).

DRILL_PODS=8
TIMEOUT_MS=$(grep -o '"timeoutMs": *[0-9]*' conf/10-holdfast-k8s.conflist | grep -o '[0-9]*$')
REFRESH=$(grep -o '"refreshSeconds": *[0-9]*' conf/10-holdfast-k8s.conflist | grep -o '[0-9]*$')

drill_deploy() {
  sleepers_on_node1 drill "$DRILL_PODS" | kc apply -f - >"$W/drill.out" 2>&1 \
    || bad "drill deployment: $(cat "$W/drill.out")"
  wait_for 90 all_running app=drill "$DRILL_PODS"
}

# Pods of web and drill on node 1 (the ones the drill must bring back).
node1_pods() { pods 'app in (web,drill)' | awk '$2 == "node-1"' | wc -l; }
# Containerd log lines of node 1 from byte offset $1 (to offset $2 if given).
ctrd_since() {
  if [ -n "${2:-}" ]; then tail -c +"$(( $1 + 1 ))" "$W/n1/containerd.log" | head -c "$(( $2 - $1 ))"
  else tail -c +"$(( $1 + 1 ))" "$W/n1/containerd.log"; fi
}
ctrd_size() { stat -c %s "$W/n1/containerd.log"; }
ts() { sed -n 's/^time="\([^"]*\)".*/\1/p' | head -1 | xargs -I{} date -d {} +%s.%N; }

# Seconds from $2 (epoch) to the last start of the web/drill containers containerd created after
# offset $1, once at least $3 of them started; empty before.
time_to_running() {
  local off=$1 t0=$2 want=$3 ids started last
  ids=$(ctrd_since "$off" | grep 'CreateContainer within sandbox' | grep -E 'Name:(web|drill),' \
    | grep -o 'returns container id \\"[0-9a-f]*' | grep -o '[0-9a-f]*$')
  [ "$(echo "$ids" | grep -c .)" -ge "$want" ] || return 0
  started=$(for id in $ids; do ctrd_since "$off" | grep "StartContainer for \\\\\"$id\\\\\" returns successfully" | ts; done)
  [ "$(echo "$started" | grep -c .)" -ge "$want" ] || return 0
  last=$(echo "$started" | sort -n | tail -1)
  [ -n "$last" ] && awk -v a="$t0" -v b="$last" 'BEGIN {printf "%.1f", b - a}'
}
# "p50 p99 n" of the CNI ADDs (ms) containerd ran after offset $1: from its "begin cni setup"
# to its "cni result" for the same sandbox (the whole conflist, and containerd's loopback beside it).
add_percentiles() {
  ctrd_since "$1" "${2:-}" | grep -E 'msg="(begin cni setup|cni result: )' | while read -r line; do
    echo "${line##*podsandboxid=} $(echo "$line" | ts) $(case $line in *'begin cni setup'*) echo start;; *) echo end;; esac)"
  done | awk '$3 == "start" {s[$1] = $2} $3 == "end" && ($1 in s) {print int(($2 - s[$1]) * 1000)}' | sort -n \
    | awk '{v[NR] = $1} END {if (NR == 0) {print "- - 0"; exit}
      i50 = int((NR - 1) * 0.50) + 1; i99 = int((NR - 1) * 0.99) + 1; print v[i50], v[i99], NR}'
}
failures() {
  local a d; a=$(ctrd_since "$1" "${2:-}" | grep -ci 'failed to setup network for sandbox\|RunPodSandbox for .* failed')
  d=$(ctrd_since "$1" "${2:-}" | grep -ci 'failed to destroy network for sandbox')
  echo "$a ADD, $d DEL"
}
teardowns_ok() { ctrd_since "$1" "${2:-}" | grep -c 'TearDown network for sandbox .* successfully'; }
fallbacks() { ctrd_since "$1" "${2:-}" | grep -c 'using cluster info cached'; }
cache_age() {
  local f="$W/n1/var-lib-cni/holdfast/cluster-info.json" t
  t=$(grep -o '"fetchedUnix": *[0-9]*' "$f" 2>/dev/null | grep -o '[0-9]*$')
  [ -n "$t" ] && echo $(( $(date +%s) - t ))
}
block() { block_on 1 "$1"; }
unblock() { unblock_on 1 "$1"; }
leases_match() { # leases = records = host links = live pods on node 1
  local s live; s=$(node_state 1); live=$(node1_pods)
  set -- $s
  [ "$1" = "$live" ] && [ "$2" = "$live" ] && [ "$3" = "$live" ]
}
row() { printf '| %-44s | %4s | %14s | %15s | %-17s |\n' "$@"; }

drill_cold() {
  local want off t0 rtime=""
  want=$(node1_pods)
  stop_node 1
  rm -rf "$W/n1/run-containerd/"* "$W/n1/netns/"*
  # Down until the cache is stale, as after a real outage (the agent died with the node).
  local age; age=$(cache_age)
  [ -n "$age" ] && [ "$age" -le "$REFRESH" ] && sleep $(( REFRESH - age + 2 ))
  node_net 1
  block 10.43.0.1
  HF1="$W/n1/var-lib-cni/holdfast"
  ASKED0=$(stat -c %s "$HF1/counters/add-asked" 2>/dev/null || echo 0)
  off=$(ctrd_size); t0=$(date +%s.%N)
  boot_node 1 no-proxy
  local end=$(( $(date +%s) + 150 ))
  while [ "$(date +%s)" -le "$end" ]; do
    rtime=$(time_to_running "$off" "$t0" "$want"); [ -n "$rtime" ] && break; sleep 1
  done
  read -r p50 p99 n <<<"$(add_percentiles "$off")"
  ROW1=$(row "cold reboot, VIP black-holed" "$want" "${rtime:-not in 150 s}" "$p50 / $p99 ms" "$(failures "$off")")
  [ -n "$rtime" ] && ok "cold reboot with the VIP black-holed: all $want pods of node-1 Running ${rtime} s after boot" \
    || bad "cold reboot: not all $want pods Running within 150 s ($(pods 'app in (web,drill)' | awk '$2 == "node-1"' | tr '\n' ';'))"
  [ "$n" -ge "$want" ] && [ "${p99:-99999}" -le "$TIMEOUT_MS" ] && ok "each of the $n CNI ADDs bounded by timeoutMs as containerd saw them: p50 $p50 ms, p99 $p99 ms" \
    || bad "sandbox ADDs: $n, p99 $p99 ms"
  P50_BOOT=${p50:-99999}
  # A wave is one probe: of the boot's ADDs exactly one asked the API (holdfast's own count,
  # one byte per asking ADD in stateDir/counters), the others took the cache at once.
  local asked; asked=$(( $(stat -c %s "$HF1/counters/add-asked" 2>/dev/null || echo 0) - ASKED0 ))
  [ "$asked" = 1 ] && ok "the boot wave cost one wait: 1 of its $n ADDs asked the API (ADD p50 $p50 ms)" \
    || bad "the boot wave: $asked of its $n ADDs asked the API"
  local torn; torn=$(teardowns_ok "$off")
  [ "$(failures "$off")" = "0 ADD, 0 DEL" ] && ok "the runtime's DELs of the old sandboxes succeed ($torn teardowns, no failure)" \
    || bad "failures after the reboot: $(failures "$off")"
  wait_for 60 leases_match && ok "with the VIP still black-holed: leases = records = links = live pods ($(node_state 1 | cut -d' ' -f2))" \
    || bad "after the reboot (links leases records netns): $(node_state 1), live pods $(node1_pods)"
  # The agent (back with the node: the kubelet reaches the apiserver by its own address) shows
  # the phase in its metrics: the cache's age and the ADDs served from it.
  scrape() { in_n 1 curl -s --max-time 2 "http://$(node_ip 1):9473/metrics"; }
  has_adds() { scrape | grep -qE '^holdfast_cni_adds_total\{outcome="(fresh|cache)"\} [1-9]'; }
  if wait_for 90 has_adds; then
    ok "node-1's agent metrics: $(scrape | grep -E '^holdfast_(cluster_info_age_seconds|cni_adds_total|cni_add_api_probes_total)' | tr '\n' ' ')"
  else bad "node-1's agent metrics lack the phase's fallbacks: $(scrape | grep -E 'cluster_info_age|cni_adds' | tr '\n' ' ')"; fi
  # The VIP returns: kube-proxy starts in the node's namespaces (its PID namespace, so the next
  # stop kills it too).
  unblock 10.43.0.1
  # (A subshell's child: not a job of this shell, whose kill at the next stop would be reported.)
  ( nsenter -t "$(awk '{print $1}' "/proc/${NODEPID[1]}/task/${NODEPID[1]}/children")" -n -m -u -p \
    "$K/kube-proxy" --config="$W/n1/kube-proxy.yaml" --v=1 >> "$W/n1/kube-proxy.log" 2>&1 & )
  sleep 5
  leases_match && ok "the VIP is back: nothing leaked (leases = live pods = $(node1_pods))" \
    || bad "after the VIP returned: $(node_state 1), live pods $(node1_pods)"
}

# Kills every sandbox of node 1: each has a PID namespace of its own, so its pause process is
# found through node-1's cgroups.
kill_sandboxes() {
  local p
  for p in $(find "/sys/fs/cgroup/pids/$CGROOT-n1" -name cgroup.procs -exec cat {} + 2>/dev/null); do
    [ "$(tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null)" = "/bin/sleep 2147483647 " ] && kill -KILL "$p"
  done
}
# Kills node 1's sandboxes and waits up to $1 s for all $2 pods to run again; sets R_OFF, R_END,
# R_TIME (empty if not all came back).
sandbox_round() {
  local limit=$1 want=$2 t0 end
  R_OFF=$(ctrd_size); t0=$(date +%s.%N); R_TIME=""
  kill_sandboxes
  end=$(( $(date +%s) + limit ))
  while [ "$(date +%s)" -le "$end" ]; do
    R_TIME=$(time_to_running "$R_OFF" "$t0" "$want"); [ -n "$R_TIME" ] && break; sleep 1
  done
  sleep 2
  R_END=$(ctrd_size)
}

# The API unreachable by every path from node 1 for at least a minute. Two rounds of sandbox
# kills: one while the agent's cache is still fresh (no request at all), one once it is older
# than refreshSeconds (each ADD must try the API, bounded by timeoutMs, and fall back).
drill_cutoff() {
  local want t_cut age1 age2 o1 e1 r1 o2 e2 r2 p50 p99 n
  want=$(node1_pods)
  block 10.43.0.1; block 10.44.0.5; block 10.44.0.6
  t_cut=$(date +%s)
  age1=$(cache_age)
  sandbox_round 40 "$want"; o1=$R_OFF; e1=$R_END; r1=$R_TIME
  age2=$(cache_age)
  [ "$age2" -le "$REFRESH" ] && sleep $(( REFRESH - age2 + 2 ))
  age2=$(cache_age)
  sandbox_round 40 "$want"; o2=$R_OFF; e2=$R_END; r2=$R_TIME
  local left=$(( t_cut + 60 - $(date +%s) ))
  [ "$left" -gt 0 ] && sleep "$left"
  unblock 10.44.0.6; unblock 10.44.0.5; unblock 10.43.0.1
  echo "$SUITE e2e: API cut off from node-1 for $(( $(date +%s) - t_cut )) s"
  read -r p50 p99 n <<<"$(add_percentiles "$o1" "$e1")"
  P50_FRESH=${p50:-99999}
  ROW2=$(row "API cut off by every path, cache ${age1} s old" "$want" "${r1:-not in 40 s}" "$p50 / $p99 ms" "$(failures "$o1" "$e1")")
  [ -n "$r1" ] && ok "API cut off, cache fresh: the kubelet restarted all $want sandboxes from its own state, Running ${r1} s after the kill (ADD p99 $p99 ms)" \
    || bad "API cut off, cache fresh: not all $want pods restarted within 40 s"
  read -r p50 p99 n <<<"$(add_percentiles "$o2" "$e2")"
  ROW3=$(row "API still cut off, cache ${age2} s old (stale)" "$want" "${r2:-not in 40 s}" "$p50 / $p99 ms" "$(failures "$o2" "$e2")")
  [ -n "$r2" ] && [ "$n" -ge "$want" ] && [ "${p99:-99999}" -le $(( TIMEOUT_MS + 500 )) ] \
    && ok "API cut off, cache stale: all $want Running ${r2} s after the kill, $n ADDs each bounded by timeoutMs (p99 $p99 ms), $(fallbacks "$o2" "$e2") fallback warnings in containerd's log" \
    || bad "API cut off, cache stale: Running after '${r2}' s, $n ADDs, p99 $p99 ms"
  [ "$(failures "$o1")" = "0 ADD, 0 DEL" ] && ok "while cut off: every ADD and DEL succeeded ($(teardowns_ok "$o1") teardowns)" \
    || bad "while cut off: $(failures "$o1")"
  wait_for 60 leases_match && ok "API back: leases = records = links = live pods ($(node1_pods))" \
    || bad "after the cut-off (links leases records netns): $(node_state 1), live pods $(node1_pods)"
}

drill() {
  drill_deploy || { bad "drill pods not Running: $(pods app=drill | tr '\n' ';')"; return; }
  ok "drill: $DRILL_PODS more pods on node-1 ($(node1_pods) there with web's)"
  drill_cold
  drill_cutoff
  echo "$SUITE e2e: ADD p50 as containerd saw them: boot wave $P50_BOOT ms, fresh cache $P50_FRESH ms (target of issue 15: 60 ms)"
  echo
  row "phase" "pods" "to all Running" "ADD p50 / p99" "failures"
  row "---" "---" "---" "---" "---"
  echo "$ROW1"
  [ -n "${ROW2:-}" ] && echo "$ROW2"
  [ -n "${ROW3:-}" ] && echo "$ROW3"
  echo
}
