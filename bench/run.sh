#!/usr/bin/env bash
# The benchmark: holdfast vs the reference plugins, side by side. Needs root.
#   sudo bench/run.sh [cycles] [--only compare,api,parallel,soak,storm] [--soak N]
#   (default: 300 cycles, every scenario, a 1000-cycle soak) — prints markdown tables.
#   e.g. bench/run.sh --only soak      the ADD/DEL soak alone
#        bench/run.sh --only storm     the 200-pod boot storm alone
# Routing at fleet scale (1,000 and 5,000 Nodes in a real kube-apiserver) is a script of its own:
#   sudo bench/fleet.sh [1000 5000]
set -euo pipefail
cd "$(dirname "$0")/.."
# GNU time measures each plugin's peak RSS (bench.rs, Run::Rss).
dpkg-query -W containernetworking-plugins time >/dev/null 2>&1 || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq containernetworking-plugins time >/dev/null; }
# The reference plugins of the current release (1.9.1, from the stack's Debian sid package).
export HOLDFAST_REF_DIR
HOLDFAST_REF_DIR=$(realpath "$(tests/stack/build.sh)/../cni")
export HOLDFAST_BIN
HOLDFAST_BIN=$(scripts/build-release.sh)
cargo run --release --locked --quiet --example bench -- "$@"
