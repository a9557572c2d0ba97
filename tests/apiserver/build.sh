#!/usr/bin/env bash
# Builds kube-apiserver 1.20.2 from Debian bookworm's `kubernetes` source package (it carries
# vendor/), with Debian's Go 1.19, once per machine. Prints the binary's path on stdout.
#
# Cache: $HOLDFAST_CACHE (default /var/cache/holdfast). Needs root (apt-get).
set -euo pipefail
CACHE=${HOLDFAST_CACHE:-/var/cache/holdfast}
OUT="$CACHE/kube-apiserver-1.20.2"
if [ -x "$OUT" ]; then echo "$OUT"; exit 0; fi
log() { echo "apiserver/build.sh: $*" >&2; }
ROOT=$(cd "$(dirname "$0")/../.." && pwd)

need=()
for p in golang-1.19-go rsync golang-github-modern-go-reflect2-dev dpkg-dev etcd-server make; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi

SRC="$CACHE/src"
mkdir -p "$SRC"
if [ -z "$(ls -d "$SRC"/kubernetes-*/ 2>/dev/null)" ]; then
  log "fetching the kubernetes source package"
  # Through a private apt configuration: the machine's apt sources are never changed.
  (cd "$SRC" && "$ROOT/tests/lib/apt-private.sh" bookworm deb-src source -qq kubernetes >&2)
fi
TREE=$(ls -d "$SRC"/kubernetes-*/ | head -n1)
# The vendored reflect2 does not build with Go 1.18+; Debian's 1.0.2 does.
R2=/usr/share/gocode/src/github.com/modern-go/reflect2
if [ -d "$R2" ] && ! cmp -s "$R2/go_above_118.go" "$TREE/vendor/github.com/modern-go/reflect2/go_above_118.go" 2>/dev/null; then
  log "replacing vendor/github.com/modern-go/reflect2 with Debian's"
  rm -rf "$TREE/vendor/github.com/modern-go/reflect2"
  cp -r "$R2" "$TREE/vendor/github.com/modern-go/reflect2"
fi
log "building kube-apiserver (several minutes, once)"
(
  cd "$TREE"
  export PATH=/usr/lib/go-1.19/bin:$PATH GOFLAGS=-mod=vendor GO111MODULE=on GOCACHE="$CACHE/gocache"
  make WHAT=cmd/kube-apiserver >&2
)
BIN=$(find "$TREE/_output" -type f -name kube-apiserver -perm -u+x | head -n1)
[ -n "$BIN" ] || { log "build produced no binary"; exit 1; }
install -m 0755 "$BIN" "$OUT"
echo "$OUT"
