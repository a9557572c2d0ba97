#!/usr/bin/env bash
# The current stack, built once per machine and cached under $HOLDFAST_CACHE (default
# /var/cache/holdfast), keyed by version; a second run builds nothing. Prints the bin dir on stdout.
#   Kubernetes v$K8S (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy,
#     kubectl) from the Go module proxy: k8s.io/kubernetes as a module of a generated go.mod that
#     pins the staging modules (its own `=> ./staging/...` replaces do not apply to a consumer) to
#     the published v0.$MINOR.$PATCH of each.
#   etcd v$ETCD, the version that release's go.mod names, through a four-line main around
#     go.etcd.io/etcd/server/v3/etcdmain (etcd's own main module carries replaces: no `go install`).
#   containerd $CTRD (containerd, its runc shim, ctr; bin/) and the reference plugins $PLUGINS
#     (cni/ beside bin/), extracted from Debian sid's .debs (tests/lib/apt-private.sh: the machine's apt sources are untouched,
#     nothing is installed system-wide). runc stays Debian 12's.
# Every Go build runs under `nice -n 19`. Needs Go >= 1.26 (the release's go.mod says so).
# Usage: tests/stack/build.sh [e2e]   (e2e: also e2e.test of the same release, `go test -c`, its
#   agnhost, the ginkgo CLI that runs it in parallel, and CoreDNS v$COREDNS, the version that release's kubeadm deploys)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
K8S=1.36.3
ETCD=3.6.8
CTRD=2.1.9
PLUGINS=1.9.1
COREDNS=1.14.2
CACHE=${HOLDFAST_CACHE:-/var/cache/holdfast}
OUT="$CACHE/stack-k8s$K8S-etcd$ETCD"
KBINS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
export GOCACHE="$CACHE/go-build" GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
log() { echo "stack/build.sh: $*" >&2; }
# Wall time and disk use of one step, for the record (stderr).
timed() {
  local what=$1 t0=$SECONDS
  shift
  "$@"
  log "$what: built in $((SECONDS - t0)) s"
}
mkdir -p "$OUT/bin" "$OUT/src"
need_go() {
  local v
  v=$(go env GOVERSION 2>/dev/null) || { log "no Go toolchain (Go >= 1.26 is needed)"; return 1; }
  case $v in go1.2[6-9]*|go1.[3-9]*) ;; *) log "$v is too old: Go >= 1.26 is needed"; return 1;; esac
}

# ---- etcd ----
etcd_build() {
  local d="$OUT/src/etcd"
  mkdir -p "$d"
  cd "$d"
  printf 'module holdfast.test/etcd\n\ngo 1.26.0\n' > go.mod
  printf 'package main\n\nimport (\n\t"os"\n\n\t"go.etcd.io/etcd/server/v3/etcdmain"\n)\n\nfunc main() { etcdmain.Main(os.Args) }\n' > main.go
  go get "go.etcd.io/etcd/server/v3@v$ETCD" >&2
  nice -n 19 go build -trimpath -ldflags "-s -w" -o "$OUT/bin/etcd" . >&2
  cd "$ROOT"
}
[ -x "$OUT/bin/etcd" ] || { need_go || exit 1; timed "etcd v$ETCD" etcd_build; }

# ---- containerd and the reference plugins, from Debian sid ----
# The pinned Debian version when sid still has it, else sid's current one (sid moves on): each is
# cached in a directory named by the version actually extracted, and linked into the bin dir.
deb_extract() {
  local pkg=$1 want=$2 tmp deb ver dir
  tmp=$(mktemp -d)
  (cd "$tmp" && { "$ROOT/tests/lib/apt-private.sh" sid deb download -qq "$pkg=$want" 2>/dev/null \
    || { log "sid no longer has $pkg $want: taking its current one"; \
         "$ROOT/tests/lib/apt-private.sh" sid deb download -qq "$pkg"; }; } >&2)
  deb=$(ls "$tmp"/"$pkg"_*.deb)
  ver=$(dpkg-deb -f "$deb" Version)
  dir="$CACHE/$pkg-$ver"
  if [ ! -d "$dir" ]; then
    dpkg -x "$deb" "$tmp/x"
    mkdir -p "$dir.tmp"
    case $pkg in
      containerd) for b in containerd containerd-shim-runc-v2 ctr; do cp -a "$tmp/x/usr/bin/$b" "$dir.tmp/"; done ;;
      *) cp -a "$tmp"/x/usr/lib/cni/. "$dir.tmp/" ;;
    esac
    mv "$dir.tmp" "$dir"
  fi
  rm -rf "$tmp"
  log "$pkg $ver in $dir"
  case $pkg in
    containerd) for b in containerd containerd-shim-runc-v2 ctr; do ln -sfn "$dir/$b" "$OUT/bin/$b"; done ;;
    *) ln -sfn "$dir" "$OUT/cni" ;;
  esac
}
[ -x "$OUT/bin/containerd" ] || timed "containerd (sid .deb)" deb_extract containerd "$CTRD+ds1-5"
[ -x "$OUT/cni/portmap" ] || timed "reference plugins (sid .deb)" deb_extract containernetworking-plugins "$PLUGINS+ds1-1"

# ---- Kubernetes ----
kube_module() {
  local d="$OUT/src/kubernetes" mod b
  mkdir -p "$d"
  cd "$d"
  mod=$(go mod download -json "k8s.io/kubernetes@v$K8S" | sed -n 's/^\t"GoMod": "\(.*\)",$/\1/p')
  [ -f "$mod" ] || { log "no go.mod for k8s.io/kubernetes@v$K8S"; return 1; }
  {
    printf 'module holdfast.test/stack\n\ngo 1.26.0\n\nrequire k8s.io/kubernetes v%s\n\n' "$K8S"
    # k8s.io/api => ./staging/src/k8s.io/api   becomes   k8s.io/api => k8s.io/api v0.36.3
    sed -n 's#^\t\(k8s\.io/[a-z0-9-]*\) => \./staging/src/.*#replace \1 => \1 v0.'"${K8S#1.}"'#p' "$mod"
  } > go.mod
  grep -q '^replace k8s.io/api ' go.mod || { log "no staging replaces found in $mod"; return 1; }
  # `go get` of the main packages resolves what they import into go.mod and go.sum.
  # Each with the version: a bare path would mean the newest release.
  local pkgs=()
  for b in "${KBINS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b@v$K8S"); done
  go get "${pkgs[@]}" >&2
  cd "$ROOT"
}
kube_build() {
  local d="$OUT/src/kubernetes" v="v$K8S" minor x pkgs=()
  minor=${K8S#1.}; minor=${minor%%.*}
  # What hack/lib/version.sh stamps: without it every component reports v0.0.0-master.
  x=""
  for p in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    x+=" -X $p.gitVersion=$v -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
    x+=" -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  for b in "$@"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
  cd "$d"
  nice -n 19 go build -trimpath -ldflags "-s -w$x" -o "$OUT/bin/" "${pkgs[@]}" >&2
  cd "$ROOT"
}
# e2e.test and agnhost (a package of the same module) share all but ~250 packages with the
# binaries above: built after them, they reuse the build cache.
kube_e2e() {
  local d="$OUT/src/kubernetes"
  cd "$d"
  go get -t "k8s.io/kubernetes/test/e2e@v$K8S" "k8s.io/kubernetes/test/images/agnhost@v$K8S" >&2
  nice -n 19 go test -c -trimpath -ldflags "-s -w" -o "$OUT/bin/e2e.test" k8s.io/kubernetes/test/e2e >&2
  nice -n 19 go build -trimpath -ldflags "-s -w" -o "$OUT/bin/agnhost" k8s.io/kubernetes/test/images/agnhost >&2
  # The TLS pair agnhost's image carries for its porter (the Proxy conformance specs use it).
  local src; src=$(go list -m -f '{{.Dir}}' k8s.io/kubernetes)/test/images/agnhost/porter
  mkdir -p "$OUT/agnhost-files"
  cp "$src/localhost.crt" "$src/localhost.key" "$OUT/agnhost-files/"
  cd "$ROOT"
}
# The ginkgo CLI of the version e2e.test is built with: it runs e2e.test's specs in parallel.
ginkgo_build() {
  cd "$OUT/src/kubernetes"
  nice -n 19 go build -trimpath -ldflags "-s -w" -o "$OUT/bin/ginkgo" github.com/onsi/ginkgo/v2/ginkgo >&2
  cd "$ROOT"
}
# CoreDNS, the version kubeadm of this release deploys (its plugin list is generated in the module).
coredns_build() {
  local d="$OUT/src/coredns"
  mkdir -p "$d"
  cd "$d"
  printf 'module holdfast.test/coredns\n\ngo 1.26.0\n' > go.mod
  go get "github.com/coredns/coredns@v$COREDNS" >&2
  nice -n 19 go build -trimpath -ldflags "-s -w" -o "$OUT/bin/coredns" github.com/coredns/coredns >&2
  cd "$ROOT"
}
missing=()
for b in "${KBINS[@]}"; do [ -x "$OUT/bin/$b" ] || missing+=("$b"); done
if [ ${#missing[@]} -gt 0 ]; then
  need_go || exit 1
  [ -f "$OUT/src/kubernetes/go.sum" ] || timed "Kubernetes v$K8S module resolution" kube_module
  log "building ${missing[*]} v$K8S (tens of minutes at nice 19, once)"
  timed "Kubernetes v$K8S ${missing[*]}" kube_build "${missing[@]}"
fi
if [ "${1:-}" = e2e ]; then
  [ -x "$OUT/bin/agnhost" ] && [ -f "$OUT/agnhost-files/localhost.key" ] || timed "e2e.test and agnhost v$K8S" kube_e2e
  [ -x "$OUT/bin/ginkgo" ] || timed "ginkgo (e2e.test's version)" ginkgo_build
  [ -x "$OUT/bin/coredns" ] || timed "CoreDNS v$COREDNS" coredns_build
fi

log "disk: $(du -shL "$OUT/bin" | cut -f1) bin, $(du -shL "$OUT/cni" | cut -f1) cni, $(du -sh "$GOCACHE" 2>/dev/null | cut -f1) Go build cache"
echo "$OUT/bin"
