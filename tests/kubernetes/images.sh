#!/usr/bin/env bash
# The images Kubernetes' conformance tests name (`e2e.test --list-images`), built offline under
# those names, and CoreDNS for the cluster DNS. Usage: images.sh OUT_DIR STACK_BIN_DIR
#   tools: agnhost of the same release (its own Go package, built by tests/stack/build.sh e2e)
#     with what the tests exec inside pods: a real /bin/sh (dash; busybox's sh runs its own
#     applets even where a real binary comes first in PATH), curl, nc (OpenBSD's: -z, -u), dig,
#     getent, and busybox-static for the rest (timeout, sed, cut, wget, ping, ip, ...). Debian 12's
#     binaries with the shared libraries ldd names. Tagged as agnhost (entrypoint /agnhost, as
#     upstream), as glibc-dns-testing (the DNS tests' second prober: dig on glibc), and as the
#     nginx the EndpointSlice tests run (served by agnhost netexec on port 80).
#   busybox: busybox-static, as upstream's busybox test image is.
#   pause: a sleep, as tests/containerd/image.sh makes it, under the release's pause name.
#   coredns: the CoreDNS binary alone, as upstream's image is.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/lib/oci.sh
OUT=$1; K=$2
R=registry.k8s.io/e2e-test-images
d=$(mktemp -d); trap 'rm -rf "$d"' EXIT

# A binary and the libraries it loads, at their paths.
with_libs() {
  local root=$1 bin=$2 lib
  install -D -m 0755 "$bin" "$root/bin/$(basename "$bin")"
  for lib in $(ldd "$bin" 2>/dev/null | awk '/=> \// {print $3} /^\t\/.*ld-linux/ {print $1}'); do
    [ -e "$root$lib" ] || { mkdir -p "$root$(dirname "$lib")" && cp -L --preserve=mode "$lib" "$root$lib"; }
  done
}
t="$d/tools"
oci_busybox_rootfs "$t"
# As upstream's image: /agnhost (and agnhost-2), porter's TLS pair at /, /uploads, a user and
# groups defined in the image.
install -m 0755 "$K/agnhost" "$t/agnhost"
ln -s agnhost "$t/agnhost-2"
cp "$K/../agnhost-files/localhost.crt" "$K/../agnhost-files/localhost.key" "$t/"
mkdir -p "$t/uploads"
rm -f "$t/bin/sh" "$t/bin/nc" "$t/bin/wget"
with_libs "$t" /bin/dash && ln -sf dash "$t/bin/sh"
with_libs "$t" /usr/bin/curl
with_libs "$t" /usr/bin/dig
with_libs "$t" /usr/bin/getent
with_libs "$t" /usr/bin/nc.openbsd && ln -sf nc.openbsd "$t/bin/nc"
ln -sf busybox "$t/bin/wget"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\nuser-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh\n' > "$t/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\nuser-defined-in-image:x:1000:\ngroup-defined-in-image:x:50000:user-defined-in-image\n' > "$t/etc/group"
printf 'hosts: files dns\n' > "$t/etc/nsswitch.conf"
chmod 1777 "$t/tmp"
ENV='"Env":["PATH=/bin:/usr/bin:/sbin:/usr/sbin"]'
oci_pack "$t" "$OUT/tools.tar" \
  "@{$ENV,\"Entrypoint\":[\"/agnhost\"],\"Cmd\":[\"pause\"]}" "$R/agnhost:2.63.0" "$R/agnhost:2.55" \
  "@{$ENV,\"Cmd\":[\"/bin/sh\"]}" "$R/glibc-dns-testing:2.0.0" \
  "@{$ENV,\"Entrypoint\":[\"/agnhost\",\"netexec\",\"--http-port=80\"]}" "$R/nginx:1.15-4" "$R/nginx:1.27-0"

b="$d/busybox"
oci_busybox_rootfs "$b"
oci_pack "$b" "$OUT/e2e-busybox.tar" '@{"Env":["PATH=/bin"],"Cmd":["sh"]}' "$R/busybox:1.37.0-1" \
  '@{"Env":["PATH=/bin"],"Entrypoint":["/bin/sleep","2147483647"]}' registry.k8s.io/pause:3.10.2

c="$d/coredns"
mkdir -p "$c/etc" "$c/tmp"
install -m 0755 "$K/coredns" "$c/coredns"
oci_pack "$c" "$OUT/coredns.tar" '@{"Entrypoint":["/coredns"]}' registry.k8s.io/coredns/coredns:v1.14.2
