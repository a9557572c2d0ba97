#!/usr/bin/env bash
# The benchmark: holdfast vs the reference plugins, side by side. Needs root.
#   sudo bench/run.sh [cycles]        (default 300) — prints a markdown table
set -euo pipefail
cd "$(dirname "$0")/.."
dpkg-query -W containernetworking-plugins >/dev/null 2>&1 || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq containernetworking-plugins >/dev/null; }
export HOLDFAST_BIN
HOLDFAST_BIN=$(scripts/build-release.sh)
cargo run --release --locked --quiet --example bench -- "${1:-300}"
