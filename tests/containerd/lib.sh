# Shared by tests/containerd/run.sh and tests/containerd/upgrade.sh (sourced; defines functions
# only). The ctr_* functions run in the machine's mount namespace with the repository as the
# working directory; the in_* functions run inside the node netns and the private mount namespace.

# Builds the CRI client, installs the Debian packages the suites use. Sets TARGET, HF, CRI.
ctr_tools() {
  TARGET=${CARGO_TARGET_DIR:-target}
  HF=$(realpath "${HOLDFAST_BIN:-$TARGET/debug/holdfast}")
  CRI=$TARGET/debug/examples/cri
  # Always (incremental): an older build may lack a command this run uses.
  cargo build --quiet --features cri --example cri
  CRI=$(realpath "$CRI")
  local p
  for p in containerd runc busybox-static containernetworking-plugins iperf3; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
      || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$p" >/dev/null
  done
}

# The stack's containerd 2.x and its plugins: sets STACK (absolute) and PLUGINS2.
ctr_stack() {
  STACK=$(realpath "$1")
  PLUGINS2=$(realpath "$STACK/../cni")
  [ -x "$STACK/containerd" ] && [ -x "$PLUGINS2/portmap" ] || { echo "no containerd or plugins in $STACK" >&2; exit 1; }
}

# This run's node netns and work directory (TAG NODE WORK, TAG from $1), and the directories the
# runtime's hard-coded paths are overlaid with. cleanup() is the EXIT trap.
ctr_world() {
  TAG="$1$$"
  NODE="$TAG-node"
  WORK=$(mktemp -d "/tmp/$TAG.XXXX")
  trap cleanup EXIT
  ip netns add "$NODE"
  ip -n "$NODE" link set lo up
  mkdir -p "$WORK"/{etc-cni,opt-cni,var-lib-cni,run-containerd,netns,root,state,hf,calls}
}
cleanup() {
  ip netns del "$NODE" 2>/dev/null
  # containerd's overlay mounts lived in the private mount namespace and went with it.
  rm -rf "$WORK" 2>/dev/null || { sleep 1; rm -rf "$WORK"; }
}

# holdfast ($HF) behind a wrapper in the CNI bin dir, and the reference plugins from $1.
ctr_plugins() {
  cp "$HF" "$WORK/opt-cni/holdfast.real"
  cat > "$WORK/opt-cni/holdfast" <<SH
#!/usr/bin/env bash
# Records what the runtime sent, then runs holdfast with it; stdout passes through untouched.
c=$WORK/calls/\$(date +%s%N).\${CNI_COMMAND:-none}
cat > "\$c.stdin"
env | grep '^CNI_' > "\$c.env"
"$WORK/opt-cni/holdfast.real" < "\$c.stdin"
rc=\$?
echo \$rc > "\$c.rc"
exit \$rc
SH
  chmod +x "$WORK/opt-cni/holdfast"
  cp "$1"/{loopback,host-local,portmap,bandwidth} "$WORK/opt-cni/"
}

# The conflist as shipped: holdfast, then the reference portmap (a DEL that portmap cannot read
# never reaches holdfast). Default stateDir /var/lib/cni/holdfast, which is $WORK/var-lib-cni here.
# Sets NET SUBNET PREFIX MASK.
ctr_conflist() {
  local conflist=conf/10-holdfast-portmap.conflist
  cp "$conflist" "$WORK/etc-cni/"
  NET=$(sed -n 's/^ *"name": *"\([^"]*\)".*/\1/p' "$conflist" | head -1)
  SUBNET=$(grep -o '"subnet": *"[0-9./]*"' "$conflist" | head -1 | grep -o '[0-9][0-9./]*')
  PREFIX=${SUBNET%.0/*}           # 10.85.0 of 10.85.0.0/16
  MASK=${SUBNET#*/}
}

# containerd 1.6's configuration (version 2) in file $1.
ctr_config_v2() {
cat > "$1" <<TOML
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
}

# containerd 2.x's (version 3) in file $1: the CRI is split into images and runtime plugins. NRI
# is off (its socket would be made in the machine's /var/run/nri); the plugins are this run's only
# (sid's package also looks in /usr/lib/cni by default).
ctr_config_v3() {
cat > "$1" <<TOML
version = 3
root = "$WORK/root"
state = "$WORK/state"
disabled_plugins = ["io.containerd.nri.v1.nri"]
[grpc]
  address = "$WORK/containerd.sock"
[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = "docker.io/hf/pause:e2e"
[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/opt/cni/bin"]
    conf_dir = "/etc/cni/net.d"
TOML
}

# No registry is reachable: both images are built from busybox-static.
ctr_images() {
  tests/containerd/image.sh "$WORK/busybox.tar" docker.io/hf/busybox:e2e
  tests/containerd/image.sh "$WORK/pause.tar" docker.io/hf/pause:e2e '["/bin/sleep","2147483647"]'
}

# Runs script $1 with arguments $2... in the node netns and a private mount namespace.
# nsenter, not `ip netns exec`: the latter remounts /sys and hides the cgroup mounts runc needs.
ctr_enter() {
  nsenter --net="/var/run/netns/$NODE" unshare -m --propagation private bash "$@"
}

# The pids of this run's shims: their command line names this run's socket (unique to $WORK).
ctr_shim_pids() {
  local c
  for c in /proc/[0-9]*/cmdline; do
    tr '\0' ' ' 2>/dev/null <"$c" | grep -q "^[^ ]*containerd-shim[^ ]* .*-address $WORK/containerd.sock " \
      && { c=${c#/proc/}; echo "${c%/cmdline}"; }
  done
}

# ---- inside: WORK and CRIBIN set ----
pass=0; fail=0
ok()  { pass=$((pass+1)); echo "ok   - $*"; }
bad() { fail=$((fail+1)); echo "FAIL - $*"; }

# The runtime's hard-coded paths, overlaid with this run's directories.
in_mounts() {
  local m
  for m in /etc/cni/net.d:etc-cni /opt/cni/bin:opt-cni /var/lib/cni:var-lib-cni /run/containerd:run-containerd /var/run/netns:netns; do
    mkdir -p "${m%%:*}" && mount --bind "$WORK/${m##*:}" "${m%%:*}" || { echo "FAIL - mount ${m%%:*}"; exit 1; }
  done
}
ctr() { command ctr -a "$WORK/containerd.sock" -n e2e "$@"; }
# Waits up to 20 s for containerd to answer.
in_await_containerd() {
  for _ in $(seq 1 100); do ctr version >/dev/null 2>&1 && break; sleep 0.2; done
  ctr version >/dev/null 2>&1
}
cri() { "$CRIBIN" "$WORK/containerd.sock" "$@"; }
# The calls holdfast got for container $1 and verb $2, oldest first.
calls() { ls "$WORK/calls" | grep "\\.$2\\.env\$" | sed 's/\.env$//' | while read -r c; do
  grep -q "^CNI_CONTAINERID=$1\$" "$WORK/calls/$c.env" && echo "$WORK/calls/$c"; done; }
