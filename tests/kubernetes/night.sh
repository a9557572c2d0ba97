# Sourced by tests/kubernetes/run.sh: the whole cluster's night. Both nodes are cold-rebooted at
# once (every link, route, neighbour and FDB entry of their namespaces gone with them) while the
# apiserver is unreachable from both by every path (VIP, real address, the kubelets' own). The
# kubelet cannot learn its pods; it starts only the static pod of its manifest dir, from its own
# files. That pod gets its address from holdfast's cache, and the first ADD after the boot puts
# the routes to the other node back from holdfast's persisted peer table, so each static pod
# reaches the other node's before the API returns. Then the API returns and everything must
# reconcile without a leak. One table row per node: time from the kubelet's start to cross-node
# reachability, routes to the other node's pods in place, failed CNI ADDs/DELs in containerd's log.

static_manifest() {
  cat > "$W/n$1/manifests/static.yaml" <<'YAML'
apiVersion: v1
kind: Pod
metadata: {name: static, labels: {app: static}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: static
      image: docker.io/hf/busybox:e2e
      imagePullPolicy: Never
      command: ["sleep", "100000"]
YAML
}

# "IP NETNS" of node $1's static pod from holdfast's own records (the API is not there to ask):
# while the API is down the static pod is the node's only pod, so its record is the one whose
# netns exists. NETNS is the name under the node's /var/run/netns.
static_of() {
  local f ns ip
  for f in "$W/n$1/var-lib-cni/holdfast/attachments/holdfast/"*.json; do
    [ -f "$f" ] || continue
    ns=$(tr -d ' \n' < "$f" | grep -o '"netns":"[^"]*"' | sed 's/.*"\([^"]*\)"$/\1/')
    ip=$(tr -d ' \n' < "$f" | grep -o '"ips":\[[^]]*' | grep -o '10\.42\.[0-9]*\.[0-9]*' | head -1)
    [ -n "$ns" ] && [ -n "$ip" ] && [ -e "$W/n$1/netns/$(basename "$ns")" ] && { echo "$ip $(basename "$ns")"; return; }
  done
}
# Node $1's static pod pings node $2's, from inside node $1 (its pod netns are mounts of the
# node's own mount namespace).
static_reach() {
  local a b pid; read -r _ a <<<"$(static_of "$1")"; read -r b _ <<<"$(static_of "$2")"
  pid=$(pids_of_node "$1" | head -1)
  [ -n "$a" ] && [ -n "$b" ] && [ -n "$pid" ] \
    && nsenter -t "$pid" -m ip netns exec "$a" ping -c1 -W1 "$b" >/dev/null 2>&1
}
node_pods_live() { pods 'app in (web,drill,static)' | awk -v n="node-$1" '$2 == n && $4 == "Running"' | wc -l; }

night() {
  local i cidr1 cidr2 off1 off2 t_up rows=() reach
  for i in 1 2; do static_manifest "$i"; done
  static_up() { [ "$(pods app=static | awk '$4 == "Running"' | wc -l)" = 2 ]; }
  wait_for 90 static_up && ok "a static pod on each node (from the kubelet's manifest dir)" \
    || bad "static pods: $(pods app=static | tr '\n' ';')"
  cidr1=$(kc get node node-1 -o jsonpath='{.spec.podCIDR}'); cidr2=$(kc get node node-2 -o jsonpath='{.spec.podCIDR}')
  # The night: both nodes down at once, the API unreachable from both when they come back.
  stop_node 1; stop_node 2
  for i in 1 2; do rm -rf "$W/n$i/run-containerd/"* "$W/n$i/netns/"*; node_net "$i"; block_on "$i" 10.43.0.1; block_on "$i" 10.44.0.5; block_on "$i" 10.44.0.6; done
  [ -z "$(ip -n "$TAG-n1" route show "$cidr2")$(ip -n "$TAG-n2" route show "$cidr1")" ] \
    && ok "the night: both nodes cold (no route to the other's pods), the apiserver unreachable from both" \
    || bad "routes survived the cold reboot: $(ip -n "$TAG-n1" route show "$cidr2")"
  off1=$(stat -c %s "$W/n1/containerd.log"); off2=$(stat -c %s "$W/n2/containerd.log")
  boot_node 1 no-proxy; boot_node 2 no-proxy
  local end=$(( $(date +%s) + 150 )) r12="" r21=""
  while [ "$(date +%s)" -le "$end" ] && { [ -z "$r12" ] || [ -z "$r21" ]; }; do
    [ -z "$r12" ] && static_reach 1 2 && r12=$(date +%s.%N)
    [ -z "$r21" ] && static_reach 2 1 && r21=$(date +%s.%N)
    sleep 0.5
  done
  for i in 1 2; do
    local t_k r cidr log a d routes
    t_k=$(cat "$W/n$i/kubelet.started"); r=$([ "$i" = 1 ] && echo "$r12" || echo "$r21")
    cidr=$([ "$i" = 1 ] && echo "$cidr2" || echo "$cidr1")
    routes=$(ip -n "$TAG-n$i" route show "$cidr" | grep -c .)
    log=$(tail -c +"$(( $([ "$i" = 1 ] && echo "$off1" || echo "$off2") + 1 ))" "$W/n$i/containerd.log")
    a=$(echo "$log" | grep -ci 'failed to setup network for sandbox')
    d=$(echo "$log" | grep -ci 'failed to destroy network for sandbox')
    reach=$([ -n "$r" ] && awk -v a="$t_k" -v b="$r" 'BEGIN {printf "%.1f s", b - a}' || echo "not in 150 s")
    rows+=("$(printf '| node-%s, API unreachable by every path | %24s | %14s | %-12s |' "$i" "$reach" "$routes" "$a ADD, $d DEL")")
    if [ -n "$r" ] && [ "$a" = 0 ]; then
      ok "night, node-$i: its static pod reached node-$(( 3 - i ))'s $reach after the kubelet started, API still down, routes from the cache ($routes)"
    else bad "night, node-$i: reach '$reach', routes $routes, failures $a ADD $d DEL"; fi
  done
  # Dawn: the API returns; kube-proxy starts again; everything reconciles.
  for i in 1 2; do
    unblock_on "$i" 10.44.0.6; unblock_on "$i" 10.44.0.5; unblock_on "$i" 10.43.0.1
    ( nsenter -t "$(awk '{print $1}' "/proc/${NODEPID[$i]}/task/${NODEPID[$i]}/children")" -n -m -u -p \
      "$K/kube-proxy" --config="$W/n$i/kube-proxy.yaml" --v=1 >> "$W/n$i/kube-proxy.log" 2>&1 & )
  done
  t_up=$(date +%s)
  # The API's view of the pods lags the kubelets': "Running" and the address may still be the
  # night's stale status. Every web pod must take an exec and answer on its listed address.
  web_live() {
    local p
    all_running app=web 4 || return 1
    local name node ip _
    while read -r name node ip _; do
      kc exec "$name" -- true && in_n "${node#node-}" ping -c1 -W1 "$ip" || return 1
    done < <(pods app=web)
  }
  if wait_for 120 node_ready 1 && wait_for 60 node_ready 2 && wait_for 180 web_live; then
    ok "the API back: both nodes Ready, web's 4 pods Running again $(( $(date +%s) - t_up )) s later"
  else bad "after the night: nodes $(kc get nodes --no-headers 2>&1 | tr '\n' ';') web $(pods app=web | tr '\n' ';')"; fi
  checks_routing "$(route_mode 1 2)"
  connectivity "$(route_mode 1 2)"
  for i in 1 2; do rm -f "$W/n$i/manifests/static.yaml"; done
  static_gone() { [ -z "$(pods app=static)" ]; }
  wait_for 60 static_gone || bad "static pods not removed: $(pods app=static | tr '\n' ';')"
  for i in 1 2; do
    matches() { local s live; s=$(node_state "$1"); live=$(node_pods_live "$1"); set -- $s; [ "$1" = "$live" ] && [ "$2" = "$live" ] && [ "$3" = "$live" ]; }
    wait_for 60 matches "$i" && ok "after the night, node-$i: leases = records = links = live pods ($(node_pods_live "$i"))" \
      || bad "after the night, node-$i (links leases records netns): $(node_state "$i"), live pods $(node_pods_live "$i")"
  done
  echo
  printf '| %-38s | %24s | %14s | %-12s |\n' "phase" "kubelet start to reach" "routes re-applied" "failures"
  printf '| %-38s | %24s | %14s | %-12s |\n' "---" "---" "---" "---"
  printf '%s\n' "${rows[@]}"
  echo
}
