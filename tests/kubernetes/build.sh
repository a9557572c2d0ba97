#!/usr/bin/env bash
# Builds kubelet, kube-proxy, kube-controller-manager and kube-scheduler 1.20.2 in the source tree
# that tests/apiserver/build.sh prepared, so the build is incremental (the Makefile keeps its Go
# cache in the tree, _output/local/go/cache, whatever GOCACHE says);
# extracts kubectl 1.20.2 from Debian's kubernetes-client .deb (the package cannot be installed
# where another package owns /usr/bin/kubectl). Once per machine. Prints the bin dir on stdout.
#
# Cache: $HOLDFAST_CACHE (default /var/cache/holdfast). Needs root (apt-get).
set -euo pipefail
cd "$(dirname "$0")/../.."
CACHE=${HOLDFAST_CACHE:-/var/cache/holdfast}
OUT="$CACHE/kubernetes-1.20.2"
BINS=(kubelet kube-proxy kube-controller-manager kube-scheduler)
log() { echo "kubernetes/build.sh: $*" >&2; }

have_all() {
  for b in "${BINS[@]}" kubectl kube-apiserver; do [ -x "$OUT/$b" ] || return 1; done
}
if have_all; then echo "$OUT"; exit 0; fi
mkdir -p "$OUT"

APISERVER=$(tests/apiserver/build.sh)
ln -sf "$APISERVER" "$OUT/kube-apiserver"
TREE=$(ls -d "$CACHE"/src/kubernetes-*/ | head -n1)

missing=()
for b in "${BINS[@]}"; do [ -x "$OUT/$b" ] || missing+=("$b"); done
if [ ${#missing[@]} -gt 0 ]; then
  log "building ${missing[*]} (many minutes, once)"
  (
    cd "$TREE"
    export PATH=/usr/lib/go-1.19/bin:$PATH GOFLAGS=-mod=vendor GO111MODULE=on
    make WHAT="${missing[*]/#/cmd/}" >&2
  )
  for b in "${missing[@]}"; do
    BIN=$(find "$TREE/_output" -type f -name "$b" -perm -u+x | head -n1)
    [ -n "$BIN" ] || { log "build produced no $b"; exit 1; }
    install -m 0755 "$BIN" "$OUT/$b"
  done
fi

if [ ! -x "$OUT/kubectl" ]; then
  log "extracting kubectl from Debian's kubernetes-client"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && apt-get download -qq kubernetes-client >&2)
  dpkg -x "$tmp"/kubernetes-client_*.deb "$tmp/x"
  install -m 0755 "$tmp/x/usr/bin/kubectl" "$OUT/kubectl"
fi
echo "$OUT"
