#!/usr/bin/env bash
# Builds holdfast's container image as an OCI image archive, offline: no registry, no docker.
# One uncompressed layer holding the static release binary (scripts/build-release.sh) as
# /holdfast; the DaemonSet runs `/holdfast install` and `/holdfast agent` from it.
#
#   scripts/build-image.sh [OUT.tar]      (default target/holdfast-image.tar)
#   ctr -n k8s.io images import OUT.tar   (on each node; the image is $IMAGE below)
#
# Prints the archive's path and the image name on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
IMAGE=${HOLDFAST_IMAGE:-docker.io/holdfast/holdfast:$version}
out=$(realpath -m "${1:-target/holdfast-image.tar}")
bin=$(scripts/build-release.sh)
# A dynamically linked binary would not start in an image with no libc.
if ldd "$bin" >/dev/null 2>&1; then echo "build-image.sh: $bin is not static" >&2; exit 1; fi

d=$(mktemp -d); trap 'rm -rf "$d"' EXIT
mkdir -p "$d/rootfs/tmp" "$d/rootfs/etc" "$d/blobs/sha256"
install -m 0755 "$bin" "$d/rootfs/holdfast"
chmod 1777 "$d/rootfs/tmp"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$d/rootfs" -cf "$d/layer.tar" .
blob() { local s; s=$(sha256sum "$1" | cut -d' ' -f1); cp "$1" "$d/blobs/sha256/$s"; echo "$s $(stat -c %s "$1")"; }
read -r ld ls < <(blob "$d/layer.tar")
printf '{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/holdfast"],"Cmd":["agent"],"Labels":{"org.opencontainers.image.version":"%s"}},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
  "$version" "$ld" > "$d/config.json"
read -r cd cs < <(blob "$d/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
  "$cd" "$cs" "$ld" "$ls" > "$d/manifest.json"
read -r md ms < <(blob "$d/manifest.json")
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
  "$md" "$ms" "$IMAGE" "${IMAGE##*:}" > "$d/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' > "$d/oci-layout"
mkdir -p "$(dirname "$out")"
tar -C "$d" -cf "$out.tmp" oci-layout index.json blobs
mv -f "$out.tmp" "$out"
echo "$out $IMAGE"
