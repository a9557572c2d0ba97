#!/usr/bin/env bash
# Builds an OCI image archive offline from Debian's busybox-static: every applet as a symlink,
# one uncompressed layer. Usage: image.sh OUT.tar NAME [CMD-JSON]
# (e.g. docker.io/hf/busybox:e2e '["/bin/sh"]'; a pause image is the same with a sleep as CMD).
set -euo pipefail
source "$(dirname "$0")/../lib/oci.sh"
out=$1; name=$2; cmd=${3:-'["/bin/sh"]'}
d=$(mktemp -d); trap 'rm -rf "$d"' EXIT
oci_busybox_rootfs "$d/rootfs"
oci_pack "$d/rootfs" "$out" "@{\"Env\":[\"PATH=/bin\"],\"Cmd\":$cmd}" "$name"
