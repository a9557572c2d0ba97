# Sourced by tests/kubernetes/run.sh: the incident's night on node-1.
#   cold: every process of the node killed at once, /run emptied (pod netns and links gone with
#     the namespaces), the node's network made afresh, the VIP black-holed in raw OUTPUT and
#     PREROUTING (connects time out) and kube-proxy not started: its rules never come back. The
#     kubelet reaches the apiserver by its real address, as on RKE2. The node stays down until
#     its cluster-info cache is older than refreshSeconds, so ADD has to try the API.
#   cut-off: the API unreachable by every path (VIP and real address) for a minute while the
#     kubelet replaces every sandbox of the node (their pause processes killed) from its own state.
# Prints one table row per phase: pods, time to all Running (the last pod container start that
# containerd logged), CNI ADD p50/p99 as containerd timed them (its debug log), failures (failed
# sandbox setups and network teardowns in containerd's log).

DRILL_PODS=8
TIMEOUT_MS=$(grep -o '"timeoutMs": *[0-9]*' conf/10-holdfast-k8s.conflist | grep -o '[0-9]*$')
REFRESH=$(grep -o '"refreshSeconds": *[0-9]*' conf/10-holdfast-k8s.conflist | grep -o '[0-9]*$')

drill_deploy() {
  kc apply -f - >"$W/drill.out" 2>&1 <<YAML || bad "drill deployment: $(cat "$W/drill.out")"
apiVersion: apps/v1
kind: Deployment
metadata: {name: drill}
spec:
  replicas: $DRILL_PODS
  selector: {matchLabels: {app: drill}}
  template:
    metadata: {labels: {app: drill}}
    spec:
      terminationGracePeriodSeconds: 1
      nodeSelector: {kubernetes.io/hostname: node-1}
      containers:
        - name: drill
          image: docker.io/hf/busybox:e2e
          imagePullPolicy: Never
          command: ["sleep", "100000"]
YAML
  wait_for 90 all_running app=drill "$DRILL_PODS"
}

# Pods of web and drill on node 1 (the ones the drill must bring back).
node1_pods() { pods 'app in (web,drill)' | awk '$2 == "node-1"' | wc -l; }
# Containerd log lines of node 1 since byte offset $1.
ctrd_since() { tail -c +"$(( $1 + 1 ))" "$W/n1/containerd.log"; }
ctrd_size() { stat -c %s "$W/n1/containerd.log"; }
ts() { sed -n 's/^time="\([^"]*\)".*/\1/p' | head -1 | xargs -I{} date -d {} +%s.%N; }

# Seconds from $2 (epoch) to the start of the Nth web/drill container containerd logged after
# offset $1; empty if fewer started.
time_to_running() {
  local off=$1 t0=$2 want=$3 ids last
  ids=$(ctrd_since "$off" | grep 'CreateContainer within sandbox' | grep -E 'Name:(web|drill),' \
    | grep -o 'returns container id \\"[0-9a-f]*' | grep -o '[0-9a-f]*$')
  [ "$(echo "$ids" | grep -c .)" -ge "$want" ] || return 0
  last=$(for id in $ids; do ctrd_since "$off" | grep "StartContainer for \\\\\"$id\\\\\" returns successfully" | ts; done | sort -n | tail -1)
  [ -n "$last" ] && awk -v a="$t0" -v b="$last" 'BEGIN {printf "%.1f", b - a}'
}
# "p50 p99 n" of the CNI ADDs (ms) containerd ran after offset $1: from its "begin cni setup"
# to its "cni result" for the same sandbox (the whole conflist: loopback, holdfast, portmap).
add_percentiles() {
  ctrd_since "$1" | grep -E 'msg="(begin cni setup|cni result: )' | while read -r line; do
    echo "${line##*podsandboxid=} $(echo "$line" | ts) $(case $line in *'begin cni setup'*) echo start;; *) echo end;; esac)"
  done | awk '$3 == "start" {s[$1] = $2} $3 == "end" && ($1 in s) {print int(($2 - s[$1]) * 1000)}' | sort -n \
    | awk '{v[NR] = $1} END {if (NR == 0) {print "- - 0"; exit}
      i50 = int((NR - 1) * 0.50) + 1; i99 = int((NR - 1) * 0.99) + 1; print v[i50], v[i99], NR}'
}
failures() {
  local a d; a=$(ctrd_since "$1" | grep -ci 'failed to setup network for sandbox\|RunPodSandbox for .* failed')
  d=$(ctrd_since "$1" | grep -ci 'failed to destroy network for sandbox')
  echo "$a ADD, $d DEL"
}
teardowns_ok() { ctrd_since "$1" | grep -c 'TearDown network for sandbox .* successfully'; }
fallbacks() { ctrd_since "$1" | grep -c 'using cluster info cached'; }
cache_age() {
  local f="$W/n1/var-lib-cni/holdfast/cluster-info.json" t
  t=$(grep -o '"fetchedUnix": *[0-9]*' "$f" 2>/dev/null | grep -o '[0-9]*$')
  [ -n "$t" ] && echo $(( $(date +%s) - t ))
}
in_n1() { nsenter --net="/var/run/netns/$TAG-n1" "$@"; }
block() { for c in OUTPUT PREROUTING; do in_n1 iptables -t raw -A "$c" -d "$1" -j DROP; done; }
unblock() { for c in OUTPUT PREROUTING; do in_n1 iptables -t raw -D "$c" -d "$1" -j DROP; done; }
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
  local torn; torn=$(teardowns_ok "$off")
  [ "$(failures "$off")" = "0 ADD, 0 DEL" ] && ok "the runtime's DELs of the old sandboxes succeed ($torn teardowns, no failure)" \
    || bad "failures after the reboot: $(failures "$off")"
  wait_for 60 leases_match && ok "with the VIP still black-holed: leases = records = links = live pods ($(node_state 1 | cut -d' ' -f2))" \
    || bad "after the reboot (links leases records netns): $(node_state 1), live pods $(node1_pods)"
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

drill_cutoff() {
  local want off t0 rtime=""
  want=$(node1_pods)
  block 10.43.0.1; block 10.44.0.5
  off=$(ctrd_size); t0=$(date +%s.%N)
  local p
  # Each sandbox has a PID namespace of its own: its pause process is found by node-1's cgroups.
  for p in $(find "/sys/fs/cgroup/pids/$CGROOT-n1" -name cgroup.procs -exec cat {} + 2>/dev/null); do
    [ "$(tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null)" = "/bin/sleep 2147483647 " ] && kill -KILL "$p"
  done
  local end=$(( $(date +%s) + 60 ))
  while [ "$(date +%s)" -le "$end" ]; do
    [ -z "$rtime" ] && rtime=$(time_to_running "$off" "$t0" "$want")
    sleep 1
  done
  unblock 10.44.0.5; unblock 10.43.0.1
  read -r p50 p99 n <<<"$(add_percentiles "$off")"
  ROW2=$(row "API unreachable by every path for 60 s" "$want" "${rtime:-not in 60 s}" "$p50 / $p99 ms" "$(failures "$off")")
  [ -n "$rtime" ] && ok "API cut off: the kubelet restarted all $want sandboxes from its own state, Running ${rtime} s after the kill ($(fallbacks "$off") ADDs fell back to the cache)" \
    || bad "API cut off: not all $want pods restarted within 60 s"
  [ "$(failures "$off")" = "0 ADD, 0 DEL" ] && ok "while cut off: every ADD and DEL succeeded ($(teardowns_ok "$off") teardowns)" \
    || bad "while cut off: $(failures "$off")"
  wait_for 60 leases_match && ok "API back: leases = records = links = live pods ($(node1_pods))" \
    || bad "after the cut-off (links leases records netns): $(node_state 1), live pods $(node1_pods)"
}

drill() {
  drill_deploy || { bad "drill pods not Running: $(pods app=drill | tr '\n' ';')"; return; }
  ok "drill: $DRILL_PODS more pods on node-1 ($(node1_pods) there with web's)"
  drill_cold
  drill_cutoff
  echo
  row "phase" "pods" "to all Running" "ADD p50 / p99" "failures"
  row "---" "---" "---" "---" "---"
  echo "$ROW1"
  [ -n "${ROW2:-}" ] && echo "$ROW2"
  echo
}
