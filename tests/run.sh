#!/usr/bin/env bash
# Runs every test: installs what the tests need from Debian packages when missing, then
# rustfmt check, clippy -D warnings, and cargo test (unit + privileged integration tests).
# Run as root (sudo tests/run.sh): privileged tests skip loudly otherwise, and fail when
# HOLDFAST_REQUIRE_PRIVILEGED=1.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(iproute2 iputils-ping iperf3 iptables containernetworking-plugins containerd runc busybox-static ca-certificates)
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
echo "== cargo test"
cargo test --all-targets --locked 2>&1 | tee /tmp/holdfast-test.log
# cargo test exits non-zero on failure (pipefail); count what ran for the log reader.
awk '/^test result:/ {p+=$4; f+=$6; i+=$8} END {printf "holdfast tests: %d passed, %d failed, %d ignored\n", p, f, i}' /tmp/holdfast-test.log
