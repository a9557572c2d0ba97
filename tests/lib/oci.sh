# Sourced: packs a root filesystem into an OCI image archive offline (no registry, no docker),
# one uncompressed layer, reproducible (sorted, owner 0, mtime 0).
#   oci_pack ROOTFS OUT.tar @CONFIG-JSON NAME... [@CONFIG-JSON NAME...]
# Each @CONFIG-JSON is an image config's "config" object (Entrypoint, Cmd, Env, ...) for the
# names after it: one layer, one manifest per config, one index entry per name (`ctr images
# import` makes one image per name).
oci_pack() {
  local rootfs=$1 out=$2 d ld ls cd cs md ms arg entries=""
  shift 2
  d=$(mktemp -d)
  mkdir -p "$d/blobs/sha256"
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$rootfs" -cf "$d/layer.tar" .
  _oci_blob() { local s; s=$(sha256sum "$1" | cut -d' ' -f1); mv "$1" "$d/blobs/sha256/$s"; echo "$s $(stat -c %s "$d/blobs/sha256/$s")"; }
  read -r ld ls < <(_oci_blob "$d/layer.tar")
  for arg in "$@"; do
    if [ "${arg:0:1}" = @ ]; then
      printf '{"architecture":"amd64","os":"linux","config":%s,"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "${arg:1}" "$ld" > "$d/config.json"
      read -r cd cs < <(_oci_blob "$d/config.json")
      printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' "$cd" "$cs" "$ld" "$ls" > "$d/manifest.json"
      read -r md ms < <(_oci_blob "$d/manifest.json")
      continue
    fi
    entries+="${entries:+,}$(printf '{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}' "$md" "$ms" "$arg" "${arg##*:}")"
  done
  printf '{"schemaVersion":2,"manifests":[%s]}' "$entries" > "$d/index.json"
  echo '{"imageLayoutVersion":"1.0.0"}' > "$d/oci-layout"
  tar -C "$d" -cf "$out" oci-layout index.json blobs
  rm -rf "$d"
}

# A busybox-static root filesystem in $1: every applet a symlink in /bin.
oci_busybox_rootfs() {
  local r=$1 a
  mkdir -p "$r/bin" "$r/proc" "$r/sys" "$r/dev" "$r/etc" "$r/tmp"
  cp /bin/busybox "$r/bin/busybox"
  for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$r/bin/$a"; done
}
