#!/usr/bin/env bash
# Runs every test: installs what the tests need from Debian packages when missing, then
# rustfmt check, clippy -D warnings, and cargo test (unit + privileged integration tests).
# Run as root (sudo tests/run.sh): privileged tests skip loudly otherwise, and fail when
# HOLDFAST_REQUIRE_PRIVILEGED=1.
set -euo pipefail
cd "$(dirname "$0")/.."

# protobuf-compiler: the CRI client of the containerd e2e test is generated from the CRI protos.
PKGS=(iproute2 iputils-ping iperf3 iptables containernetworking-plugins containerd runc busybox-static ca-certificates curl openssl protobuf-compiler)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "tests/run.sh: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "tests/run.sh: WARNING: missing packages ${missing[*]} (run as root to install them)" >&2
  fi
fi

command -v cargo >/dev/null || { echo "tests/run.sh: cargo not found; install Rust (rustup) first" >&2; exit 1; }

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --all-targets --locked -- -D warnings
# `cri` also lints the containerd test's CRI client (it needs protoc, installed above).
cargo clippy --all-targets --locked --features failpoints,cri -- -D warnings
log=$(mktemp /tmp/holdfast-test.XXXXXX)
trap 'rm -f "$log"' EXIT
echo "== cargo test"
# The privileged tests are #[ignore = "needs root"] for a plain `cargo test`; here they run, and
# the failpoints of tests/crash.rs are compiled into the test build (never into a release).
cargo test --all-targets --locked --features failpoints -- --include-ignored 2>&1 | tee "$log"

# End to end, as root: Debian 12's containerd 1.6 and the current stack's containerd 2.x (the
# runtimes distributions ship, STATUS on 2.x), a real kube-apiserver, and a two-node Kubernetes
# cluster with holdfast installed by its DaemonSet. The current stack (Kubernetes, etcd,
# containerd 2.x, the reference plugins) is built once per machine (tests/stack/build.sh).
e2e_run() {
  echo "== $*"
  if [ "$(id -u)" -eq 0 ]; then
    "$@" 2>&1 | tee -a "$log"
  elif [ "${HOLDFAST_REQUIRE_PRIVILEGED:-}" = 1 ]; then
    echo "$1 needs root and HOLDFAST_REQUIRE_PRIVILEGED=1 is set"; exit 1
  else
    echo "*** SKIPPED $1: needs root (sudo tests/run.sh) ***"
  fi
}
e2e_run tests/containerd/run.sh
if [ "$(id -u)" -eq 0 ]; then
  echo "== tests/stack/build.sh"
  STACK=$(tests/stack/build.sh)
  e2e_run tests/containerd/run.sh "$STACK"
  e2e_run tests/containerd/upgrade.sh "$STACK"
fi
e2e_run tests/apiserver/run.sh
e2e_run tests/kubernetes/run.sh
# Every step above exits non-zero on failure (set -e, pipefail); this is the count.
awk '/^test result:/ {p+=$4; f+=$6} / e2e: [0-9]+ passed/ {p+=$(NF-3); f+=$(NF-1)} END {printf "total: %d passed, %d failed\n", p, f}' "$log"
