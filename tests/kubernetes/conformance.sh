# Sourced by tests/kubernetes/run.sh: Kubernetes' own conformance tests of the same release on
# this cluster, the control plane routing no pod CIDR (so every cross-node packet is holdfast's):
# focus `\[sig-network\].*\[Conformance\]` plus every `Networking Granular Checks` spec, run by
# ginkgo in parallel against e2e.test. The images the tests name are built offline
# (tests/kubernetes/images.sh) and imported on the nodes at boot; CoreDNS
# (tests/kubernetes/coredns.yaml) serves the kube-dns Service the kubelets name.
# The apiserver reaches pods (its proxy, the Proxy specs) the way a control-plane host of a real
# cluster does: `holdfast agent` runs there too (its routing, `direct`: the control plane is on
# both node segments), from a conflist of its own (a host that is not a Node: no IPAM, no pods).
# Prints one line per spec and "conformance e2e: N passed, M failed" (the skipped specs named
# with their reason).

# The specs left out, each with its reason (the ginkgo skip expression is built from these).
CONFORMANCE_SKIPS=(
  'SCTPConnectivity|SCTP needs the sctp kernel module, which would be loaded machine-wide'
)
CONFORMANCE_FOCUS='\[sig-network\].*\[Conformance\]|Networking Granular Checks'

# The control plane's own `holdfast agent`: routes to every node's pod CIDR, by holdfast, for the
# control plane's own traffic only: it forwards no pod packet (so pod-to-pod traffic between
# the nodes stays holdfast's: direct on one segment, VXLAN across the two).
cp_agent() {
  local C=$1 s
  # Packets the control plane routes for the node segments look up a table that has the segments
  # and nothing else, ending there (iptables would not do: the segments' bridged frames cross FORWARD too).
  for s in 0 1; do
    ip -n "$CP" route add "10.44.$s.0/24" dev "kbr$s" table 100
    ip -n "$CP" rule add iif "kbr$s" lookup 100 pref 100
  done
  ip -n "$CP" route add unreachable default table 100
  mkdir -p "$C/cp/sa" "$C/cp/state"
  cp "$W/pki/ca.crt" "$C/cp/sa/ca.crt"
  printf '%s' "$ADMIN" > "$C/cp/sa/token"
  # The apiserver by its real address, with the admin token: this host is the control plane.
  kubeconfig "$C/cp/holdfast-kubeconfig" "$ADMIN"
  cat > "$C/cp/holdfast.conflist" <<CONF
{"cniVersion": "1.0.0", "name": "holdfast", "plugins": [{"type": "holdfast", "stateDir": "$C/cp/state",
  "kubernetes": {"kubeconfig": "$C/cp/holdfast-kubeconfig", "nodeName": "control-plane"},
  "routing": {"mode": "direct"}}]}
CONF
  nsenter --net="/var/run/netns/$CP" "$(scripts/build-release.sh)" agent --conf "$C/cp/holdfast.conflist" \
    --sa-dir "$C/cp/sa" >"$C/cp/agent.log" 2>&1 &
  PIDS+=($!)
}

# "status<TAB>name<TAB>why" per [It] spec of a ginkgo JUnit report (status: passed, failed,
# skipped, ...; why: the reason a spec skipped itself at run time, empty for the specs the
# focus and skip expressions left out).
junit_specs() {
  awk '
    /<testcase name="\[It\]/ {
      if (name != "") print st "\t" name "\t" why
      name = $0; sub(/.*<testcase name="\[It\] /, "", name); sub(/" classname=.*/, "", name)
      st = $0; sub(/.*status="/, "", st); sub(/".*/, "", st); why = ""
    }
    /<skipped message="skipped - / { why = $0; sub(/.*<skipped message="skipped - /, "", why); sub(/".*/, "", why) }
    END { if (name != "") print st "\t" name "\t" why }
  ' "$1" | sed "s/&#39;/'/g; s/&quot;/\"/g; s/&amp;/\\&/g; s/&lt;/</g; s/&gt;/>/g"
}

conformance() {
  local C="$W/conformance" skip="" s t0 rc procs=${HF_E2E_PROCS:-4}
  mkdir -p "$C"
  for s in "${CONFORMANCE_SKIPS[@]}"; do skip+="${skip:+|}${s%%|*}"; done
  kc apply -f tests/kubernetes/coredns.yaml >"$C/coredns.out" 2>&1 || bad "kubectl apply coredns.yaml: $(cat "$C/coredns.out")"
  if kc -n kube-system rollout status deploy/coredns --timeout=120s >/dev/null 2>&1; then
    ok "CoreDNS $(kc -n kube-system get pod -l k8s-app=kube-dns -o jsonpath='{.items[0].status.podIP}') serves the kube-dns Service (10.43.0.10) the kubelets name"
  else bad "CoreDNS not available: $(kc -n kube-system get pods -l k8s-app=kube-dns -o wide 2>&1 | tail -1)"; fi
  cp_agent "$C"
  # Every node's pod CIDR routed on the control plane by its agent before the run starts.
  local want; want=$(kc get nodes -o jsonpath='{range .items[*]}{.spec.podCIDR}{"\n"}{end}' | grep -c .)
  if wait_for 30 sh -c "[ \$(ip -n $CP route show proto 104 | grep -c via) -ge $want ]"; then
    ok "the control plane's holdfast agent routes the $want nodes' pod CIDRs (direct) for itself, forwarding none: $(ip -n "$CP" route show proto 104 | tr '\n' ';')"
  else bad "the control plane's agent routed $(ip -n "$CP" route show proto 104 | grep -c via) of $want pod CIDRs: $(tail -3 "$C/cp/agent.log")"; fi

  t0=$(date +%s)
  in_cp "$GINKGO" --procs="$procs" --no-color --timeout=45m --focus="$CONFORMANCE_FOCUS" --skip="$skip" \
    --junit-report=junit.xml --output-dir="$C" "$K/e2e.test" -- \
    --provider=skeleton --num-nodes=2 --kubeconfig="$W/admin.kubeconfig" --kubectl-path="$K/kubectl" \
    --report-dir="$C/report" >"$C/e2e.log" 2>&1
  rc=$?
  local np=0 nf=0 st name why
  while IFS=$'\t' read -r st name why; do
    case $st in
      passed) np=$((np+1)); echo "ok   - $name";;
      skipped) [ -z "$why" ] || echo "skip - $name: $why";;
      *) nf=$((nf+1)); echo "FAIL - $name ($st)";;
    esac
  done < <(junit_specs "$C/junit.xml" 2>/dev/null)
  # The specs the focus selects and the skip expression leaves out, each with its reason.
  "$K/e2e.test" --ginkgo.dry-run --ginkgo.no-color --ginkgo.v --ginkgo.focus="$CONFORMANCE_FOCUS" \
    --provider=skeleton 2>/dev/null | grep -E '^\[sig-' | sed 's/ \[sig-[^]]*\]$//' | while read -r line; do
    for s in "${CONFORMANCE_SKIPS[@]}"; do
      grep -qE "${s%%|*}" <<<"$line" && { echo "skip - $line: ${s#*|}"; break; }
    done
  done
  echo "conformance e2e: ran in $(( $(date +%s) - t0 )) s with $procs ginkgo processes; $(grep -a -E '^(Ran|SUCCESS|FAIL)' "$C/e2e.log" | tr '\n' ' ')"
  [ "$np" -gt 0 ] || { nf=$((nf+1)); echo "FAIL - no spec passed (ginkgo exit $rc): $(tail -5 "$C/e2e.log" | tr '\n' ' ')"; }
  [ "$rc" -eq 0 ] || [ "$nf" -gt 0 ] || { nf=$((nf+1)); echo "FAIL - ginkgo exited $rc: $(tail -5 "$C/e2e.log" | tr '\n' ' ')"; }
  # The tests' namespaces and CoreDNS gone before the next phase counts what is left on the nodes.
  kc delete -f tests/kubernetes/coredns.yaml --wait=false >/dev/null 2>&1
  e2e_gone() {
    [ -z "$(kc get pods -A --no-headers 2>/dev/null | awk '$1 != "kube-system" && $1 != "default"')" ] &&
      [ -z "$(kc -n kube-system get pods -l k8s-app=kube-dns -o name 2>/dev/null)" ]
  }
  wait_for 300 e2e_gone || { nf=$((nf+1)); echo "FAIL - pods of the tests left: $(kc get pods -A --no-headers 2>&1 | grep -v '^kube-system\|^default' | head -3 | tr '\n' ';')"; }
  echo "conformance e2e: $np passed, $nf failed"
  [ "$nf" -eq 0 ] && ok "Kubernetes $KVER conformance ($CONFORMANCE_FOCUS): $np passed" \
    || bad "Kubernetes $KVER conformance: $nf failed (specs above; log $C/e2e.log)"
}
