#!/usr/bin/env bash
# The release build of the plugin: optimised for size, statically linked, not position
# independent. A CNI plugin is exec'd once per pod; a static non-PIE binary needs no dynamic
# loader and no relocations at start-up, and its peak RSS is a third lower (bench/RESULTS.md).
# It also runs on nodes whose libc differs from the build machine's. Prints the binary's path.
set -euo pipefail
cd "$(dirname "$0")/.."
triple=$(rustc -vV | sed -n 's/^host: //p')
# --target keeps these flags off build scripts and proc macros, which must stay dynamic.
RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" \
  cargo build --release --locked --quiet --target "$triple" --bin holdfast >&2
# Where cargo put it: CARGO_TARGET_DIR when it is set, as cargo itself reads it.
echo "${CARGO_TARGET_DIR:-target}/$triple/release/holdfast"
