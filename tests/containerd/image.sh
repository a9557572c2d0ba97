#!/usr/bin/env bash
# Builds an OCI image archive offline from Debian's busybox-static: every applet as a symlink,
# one uncompressed layer. Usage: image.sh OUT.tar NAME [CMD-JSON]
# (e.g. docker.io/hf/busybox:e2e '["/bin/sh"]'; a pause image is the same with a sleep as CMD).
set -euo pipefail
out=$1; name=$2; cmd=${3:-'["/bin/sh"]'}
d=$(mktemp -d); trap 'rm -rf "$d"' EXIT
mkdir -p "$d/rootfs/bin" "$d/rootfs/proc" "$d/rootfs/sys" "$d/rootfs/dev" "$d/rootfs/etc" "$d/rootfs/tmp" "$d/blobs/sha256"
cp /bin/busybox "$d/rootfs/bin/busybox"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$d/rootfs/bin/$a"; done
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$d/rootfs" -cf "$d/layer.tar" .
blob() { local s; s=$(sha256sum "$1" | cut -d' ' -f1); cp "$1" "$d/blobs/sha256/$s"; echo "$s $(stat -c %s "$1")"; }
read -r ld ls < <(blob "$d/layer.tar")
printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":%s},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$cmd" "$ld" > "$d/config.json"
read -r cd cs < <(blob "$d/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' "$cd" "$cs" "$ld" "$ls" > "$d/manifest.json"
read -r md ms < <(blob "$d/manifest.json")
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' "$md" "$ms" "$name" "${name##*:}" > "$d/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' > "$d/oci-layout"
tar -C "$d" -cf "$out" oci-layout index.json blobs
