# Sourced by tests/kubernetes/run.sh: the cluster checks, one line each.

# Polls `cmd` every half second for at most $1 seconds; true once it succeeds.
wait_for() {
  local limit=$1; shift
  local end=$(( $(date +%s) + limit ))
  while [ "$(date +%s)" -le "$end" ]; do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  return 1
}
# In node $1's netns; an address black-holed there (connects time out) and back.
in_n() { local i=$1; shift; nsenter --net="/var/run/netns/$TAG-n$i" "$@"; }
block_on() { for c in OUTPUT PREROUTING; do in_n "$1" iptables -t raw -A "$c" -d "$2" -j DROP; done; }
unblock_on() { for c in OUTPUT PREROUTING; do in_n "$1" iptables -t raw -D "$c" -d "$2" -j DROP; done; }
node_ready() { [ "$(kc get node "node-$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]; }
node_registered() { kc get node "node-$1" >/dev/null 2>&1; }
# IPv4 address $1 in CIDR $2.
ip4_int() { local a b c d; IFS=. read -r a b c d <<<"$1"; echo $(( (a << 24) | (b << 16) | (c << 8) | d )); }
in_cidr() {
  case $2 in */*) ;; *) return 1;; esac
  local len=${2#*/} mask
  mask=$(( len == 0 ? 0 : (0xffffffff << (32 - len)) & 0xffffffff ))
  [ $(( $(ip4_int "$1") & mask )) -eq $(( $(ip4_int "${2%/*}") & mask )) ]
}
# Non-hostNetwork pods of selector $1: "name node ip phase" a line.
pods() {
  kc get pods -l "$1" -o jsonpath='{range .items[*]}{.metadata.name} {.spec.nodeName} {.status.podIP} {.status.phase}{"\n"}{end}' |
    awk '{if (NF == 4) print; else if (NF == 3) print $1, $2, "-", $3; else print $1, "-", "-", $2}'
}
all_running() { # SELECTOR COUNT
  local n; n=$(pods "$1" | awk '$4 == "Running" && $3 != "-"' | wc -l)
  [ "$n" -eq "$2" ] && [ "$(pods "$1" | wc -l)" -eq "$2" ]
}
# A Deployment NAME of REPLICAS busybox pods that sleep, on node-1: what the drill restarts and
# what fills node-1's range (status.sh).
sleepers_on_node1() { # NAME REPLICAS
  cat <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: $1}
spec:
  replicas: $2
  selector: {matchLabels: {app: $1}}
  template:
    metadata: {labels: {app: $1}}
    spec:
      terminationGracePeriodSeconds: 1
      nodeSelector: {kubernetes.io/hostname: node-1}
      containers:
        - {name: $1, image: docker.io/hf/busybox:e2e, imagePullPolicy: Never, command: ["sleep", "100000"]}
YAML
}
# The node's holdfast state and leftovers, as "links leases records netns".
node_state() {
  local N="$W/n$1" hf="$W/n$1/var-lib-cni/holdfast"
  local links leases recs netns
  links=$(ip -n "$TAG-n$1" -o link 2>/dev/null | grep -c ': hf')
  leases=$(ls "$hf/ipam/holdfast" 2>/dev/null | grep -c '^10\.')
  recs=$(ls "$hf/attachments/holdfast" 2>/dev/null | grep -c '\.json$')
  netns=$(ls "$N/netns" 2>/dev/null | grep -c .)
  echo "$links $leases $recs $netns"
}

checks_install() {
  local i t0
  for i in 1 2; do
    if wait_for 60 node_registered "$i"; then :; else bad "node-$i did not register"; tail -5 "$W/n$i/kubelet.log"; fi
  done
  sleep 2
  if ! node_ready 1 && ! node_ready 2; then ok "both nodes registered and NotReady: no CNI config yet"
  else bad "a node is Ready before any CNI is installed"; fi
  t0=$(date +%s.%N)
  kc apply -f conf/kubernetes/holdfast.yaml >"$W/apply.out" 2>&1 && ok "kubectl apply -f conf/kubernetes/holdfast.yaml" \
    || bad "kubectl apply: $(cat "$W/apply.out")"
  if wait_for 120 node_ready 1 && wait_for 60 node_ready 2; then
    ok "both nodes Ready $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b-a}') s after the apply (DaemonSet installed holdfast)"
  else
    bad "nodes not Ready after the apply: $(kc get nodes --no-headers 2>&1 | tr '\n' ';')"
    kc -n kube-system get pods -o wide 2>&1 | tail -5
  fi
  for i in 1 2; do
    local N="$W/n$i" bad_files=""
    cmp -s conf/10-holdfast-k8s.conflist "$N/etc-cni/10-holdfast-k8s.conflist" || bad_files+=" conflist"
    cmp -s "$(scripts/build-release.sh 2>/dev/null)" "$N/opt-cni/holdfast" || bad_files+=" binary"
    grep -q 'server: https://10.43.0.1:443' "$N/etc-cni/holdfast-kubeconfig" 2>/dev/null || bad_files+=" kubeconfig"
    [ "$(stat -c %a "$N/etc-cni/holdfast-token" 2>/dev/null)" = 600 ] || bad_files+=" token"
    if [ -z "$bad_files" ]; then ok "node-$i: the DaemonSet installed the release binary, conf/10-holdfast-k8s.conflist as shipped, kubeconfig (VIP) and token (0600)"
    else bad "node-$i: wrong or missing:$bad_files ($(ls "$N/etc-cni" "$N/opt-cni" | tr '\n' ' '))"; fi
  done
  # Ready once /readyz says so (after the agent's first refresh; the probe runs every 10 s).
  ds_pods() { kc -n kube-system get pods -l app=holdfast -o jsonpath='{range .items[*]}{.metadata.name} {.status.containerStatuses[0].ready} {.status.containerStatuses[0].restartCount}{"\n"}{end}'; }
  agents_ready() { [ "$(ds_pods | awk '$2 == "true" && $3 == 0' | wc -l)" = 2 ]; }
  wait_for 60 agents_ready
  local ds; ds=$(ds_pods)
  if [ "$(echo "$ds" | awk '$2 == "true" && $3 == 0' | wc -l)" = 2 ]; then ok "holdfast DaemonSet: 2 agents ready (/readyz), no restarts"
  else bad "DaemonSet pods: $ds"; fi
  local p1; p1=$(echo "$ds" | head -1 | awk '{print $1}')
  local probe; probe=$(kc -n kube-system exec "$p1" -c agent -- /holdfast agent --conf /etc/cni/net.d/10-holdfast-k8s.conflist --check 2>&1)
  case $probe in agent\ beat*) ok "agent probe: $probe";; *) bad "agent probe: $probe";; esac
}

checks_pods() {
  kc apply -f - >"$W/web.out" 2>&1 <<'YAML' || bad "web manifests: $(cat "$W/web.out")"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 4
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      topologySpreadConstraints:
        - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: web}}}
      containers:
        - name: web
          image: docker.io/hf/busybox:e2e
          imagePullPolicy: Never
          # /cgi-bin/ip answers the address the request came from: pod-to-pod traffic must
          # arrive with the sender's pod address (never masqueraded).
          command: ["sh", "-c", "mkdir -p /www/cgi-bin && hostname > /www/index.html && printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho $REMOTE_ADDR\\n' > /www/cgi-bin/ip && chmod +x /www/cgi-bin/ip && exec httpd -f -p 8080 -h /www"]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
YAML
  if wait_for 90 all_running app=web 4; then ok "Deployment web: 4 pods Running"; else
    bad "web pods: $(pods app=web | tr '\n' ';')"
    kc get events --no-headers 2>&1 | grep -v holdfast | tail -5
  fi
  local spread=0 inside=0 name node ip phase cidr
  while read -r name node ip phase; do
    cidr=$(kc get node "$node" -o jsonpath='{.spec.podCIDR}')
    in_cidr "$ip" "$cidr" && inside=$((inside+1))
  done < <(pods app=web)
  spread=$(pods app=web | awk '{print $2}' | sort -u | wc -l)
  if [ "$spread" = 2 ] && [ "$inside" = 4 ]; then
    ok "web pods on both nodes, each address in its node's podCIDR ($(pods app=web | awk '{printf "%s:%s ", $2, $3}'))"
  else bad "spread over $spread nodes, $inside of 4 addresses in their node's podCIDR: $(pods app=web | tr '\n' ';')"; fi
  connectivity "$(route_mode 1 2)"
}

# Pod-to-pod on a node and across nodes ($1: the routing between the nodes), what the receiver
# sees, a pod to the apiserver's VIP, and a ClusterIP Service.
connectivity() {
  mapfile -t A < <(pods app=web | sort -k2 | awk '{print $1, $2, $3}')
  local a1 n1 ip1 b1 nb ipb c1 nc ipc
  read -r a1 n1 ip1 <<<"${A[0]}"; read -r b1 nb ipb <<<"${A[1]}"; read -r c1 nc ipc <<<"${A[2]}"
  kc exec "$a1" -- ping -c1 -W2 "$ipb" >/dev/null 2>&1 && ok "pod to pod on $n1: $ip1 -> $ipb" || bad "ping $ip1 -> $ipb on $n1"
  kc exec "$a1" -- ping -c1 -W2 "$ipc" >/dev/null 2>&1 && ok "pod to pod across nodes ($1): $ip1 ($n1) -> $ipc ($nc)" || bad "ping $ip1 ($n1) -> $ipc ($nc) ($1)"
  # (httpd listens on a dual-stack socket: an IPv4 peer reads as [::ffff:a.b.c.d].)
  local seen; seen=$(kc exec "$a1" -- sh -c "printf 'GET /cgi-bin/ip HTTP/1.0\\r\\n\\r\\n' | nc -w 3 $ipc 8080" 2>&1 | tail -1 | tr -d '\r' | sed 's/^\[::ffff:\(.*\)\]$/\1/')
  [ "$seen" = "$ip1" ] && ok "the receiver on $nc sees the sender's pod address ($seen): pod-to-pod is not masqueraded" \
    || bad "the receiver on $nc saw '$seen' for a request from $ip1"
  # busybox's TLS client segfaults: plain HTTP to the TLS port, and the apiserver's answer to it.
  local vip; vip=$(kc exec "$c1" -- sh -c 'printf "GET / HTTP/1.0\r\n\r\n" | nc -w 3 10.43.0.1 443' 2>&1)
  case $vip in *"HTTP request to an HTTPS server"*) ok "a pod on $nc reaches the apiserver through the VIP 10.43.0.1:443";;
    *) bad "pod -> VIP: $vip";; esac
  local svc; svc=$(kc get svc web -o jsonpath='{.spec.clusterIP}')
  # busybox's wget segfaults too: HTTP by hand with nc; the body is the serving pod's name.
  # Pods that just moved are Running before kube-proxy on the other node has their new addresses
  # (they must turn Ready, then reach the EndpointSlice): asked again for up to 30 s.
  local got
  svc_answers() {
    got=$(kc exec "$a1" -- sh -c "printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 3 $svc 80" 2>&1 | tail -1 | tr -d '\r')
    pods app=web | awk '{print $1}' | grep -qx "$got"
  }
  if wait_for 30 svc_answers; then ok "ClusterIP Service web ($svc) answers a pod on $n1: $got"
  else bad "Service $svc from $n1: $got"; fi
}

# Node $1's route to node $2's podCIDR, as `ip route` prints it (empty when there is none).
route_to() {
  local cidr; cidr=$(kc get node "node-$2" -o jsonpath='{.spec.podCIDR}' 2>/dev/null)
  [ -n "$cidr" ] && ip -n "$TAG-n$1" route show "$cidr" 2>/dev/null
}
# "direct", "vxlan" or "none": how node $1 reaches node $2's pods.
route_mode() {
  local r; r=$(route_to "$1" "$2")
  case $r in
    *"dev holdfast-vx"*) echo vxlan;;
    *"via $(node_ip "$2") dev eth0"*) echo direct;;
    *) echo none;;
  esac
}
# Both nodes route to each other's pods the way $1 says (holdfast's agents, from the watch of Nodes).
checks_routing() {
  local want=$1 mode_is
  mode_is() { [ "$(route_mode "$1" "$2")" = "$3" ]; }
  if wait_for 60 mode_is 1 2 "$want" && wait_for 30 mode_is 2 1 "$want"; then
    ok "routing auto chose $want: node-1: $(route_to 1 2 | tr -s ' '); node-2: $(route_to 2 1 | tr -s ' ')"
  else bad "not $want: node-1 '$(route_to 1 2)', node-2 '$(route_to 2 1)'"; fi
  local cp; cp=$(ip -n "$CP" route show | grep -c '^10\.42\.')
  [ "$cp" = 0 ] && ok "the control plane's router has no pod CIDR route: pods reach each other by holdfast alone" \
    || bad "the control plane routes $cp pod CIDRs"
}

# node-2 moves to the other segment: a cold reboot with a new address while the API is up. The
# Node's InternalIP changes, node-1's agent follows it, and auto turns direct into VXLAN.
checks_move() {
  stop_node 2
  rm -rf "$W/n2/run-containerd/"* "$W/n2/netns/"*
  SEG_2=1
  node_net 2
  boot_node 2
  node_addr() { kc get node node-2 -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}'; }
  addr_is() { [ "$(node_addr)" = "$(node_ip 2)" ]; }
  if wait_for 90 addr_is && wait_for 120 node_ready 2; then ok "node-2 rebooted onto 10.44.1.0/24: Ready, InternalIP $(node_addr)"
  else bad "node-2 after the move: InternalIP '$(node_addr)', Ready $(node_ready 2 && echo yes || echo no)"; fi
  wait_for 120 all_running app=web 4 || bad "web pods after the move: $(pods app=web | tr '\n' ';')"
  checks_routing vxlan
  connectivity "$(route_mode 1 2)"
}

checks_teardown() {
  kc delete deployment web drill --wait=false >/dev/null 2>&1
  kc delete service web >/dev/null 2>&1
  gone() { [ -z "$(kc get pods -l 'app in (web,drill)' -o name 2>/dev/null)" ]; }
  wait_for 120 gone || bad "pods still listed: $(kc get pods --no-headers 2>&1 | head -3 | tr '\n' ';')"
  local i s
  for i in 1 2; do
    clean() { [ "$(node_state "$1")" = "0 0 0 0" ]; }
    if wait_for 60 clean "$i"; then ok "node-$i after every pod is deleted: no link, lease, record or netns left"
    else s=$(node_state "$i"); bad "node-$i left (links leases records netns): $s"; fi
  done
}

# The host's token file on node-2 made stale (as after a rotation of the projected token) during
# the drill; the agent must have put the current one back by the end of it.
token_stale() {
  cp "$W/n2/etc-cni/holdfast-token" "$W/token.real"
  printf 'an-old-token' > "$W/n2/etc-cni/holdfast-token"
  date +%s > "$W/token.stale"
}
token_current() {
  local waited=$(( $(date +%s) - $(cat "$W/token.stale") ))
  if cmp -s "$W/token.real" "$W/n2/etc-cni/holdfast-token" && [ "$(stat -c %a "$W/n2/etc-cni/holdfast-token")" = 600 ]; then
    ok "node-2's agent replaced a stale host token file with the service account's (0600) within ${waited} s"
  else bad "node-2's host token file is not the service account's token ${waited} s after it went stale"; fi
}
