#!/usr/bin/env bash
# apt-get with a configuration of its own under $HOLDFAST_CACHE: the machine's apt sources, lists
# and package caches are never changed, and nothing is installed system-wide.
# Usage: tests/lib/apt-private.sh SUITE TYPE APT-GET-ARGS...
#   tests/lib/apt-private.sh bookworm deb-src source kubernetes   (unpacks into the current dir)
#   tests/lib/apt-private.sh sid deb download containerd          (a .deb into the current dir)
# The archive is the one the machine's own Debian source names; the lists are refreshed once a day.
set -euo pipefail
[ $# -ge 3 ] || { echo "usage: $0 SUITE deb|deb-src APT-GET-ARGS..." >&2; exit 2; }
suite=$1 type=$2
shift 2
CACHE=${HOLDFAST_CACHE:-/var/cache/holdfast}
dir="$CACHE/apt/$suite-$type"
uri=$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) { print $i; exit } }' \
  /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
[ -n "$uri" ] || uri=$(awk '$1 == "deb" && $2 ~ /\/debian\/?$/ { print $2; exit }' \
  /etc/apt/sources.list 2>/dev/null || true)
[ -n "$uri" ] || { echo "apt-private: the machine's apt sources name no Debian archive" >&2; exit 1; }
mkdir -p "$dir/parts" "$dir/lists/partial" "$dir/cache/archives/partial"
printf 'Types: %s\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
  "$type" "$uri" "$suite" > "$dir/parts/holdfast.sources"
opts=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$dir/parts"
  -o "Dir::State::Lists=$dir/lists" -o "Dir::Cache=$dir/cache" -o "APT::Get::List-Cleanup=0")
if [ -z "$(find "$dir/lists" -maxdepth 1 -name '*Release' -mmin -1440 2>/dev/null)" ]; then
  apt-get "${opts[@]}" update -qq >&2
fi
exec apt-get "${opts[@]}" "$@"
