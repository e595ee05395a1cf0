#!/usr/bin/env bash
# Assemble the root filesystem of spillway's container image: the one recipe
# for its final stage, used by the Dockerfile (inside its build stage) and by
# CI (.ci/image, which cannot pull base images and builds without a daemon).
#
#   deploy/image/rootfs.sh BINARY ROOTFS
#
# ROOTFS gets, and nothing else (no shell, no package manager):
#   /usr/local/bin/spillway         the binary, stripped
#   the shared libraries it links   exactly those `ldd` names, at their paths
#   /etc/ssl/certs/ca-certificates.crt   the build machine's CA bundle
#   /etc/passwd, /etc/group         root and nonroot (65532), as distroless has
#   /tmp                            an empty, world-writable directory
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 BINARY ROOTFS" >&2
    exit 64
fi
binary=$1
rootfs=$2
[ -x "$binary" ] || { echo "$0: $binary is not an executable" >&2; exit 66; }
command -v ldd >/dev/null || { echo "$0: ldd not found" >&2; exit 69; }

rm -rf "$rootfs"
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc/ssl/certs" "$rootfs/tmp"
chmod 1777 "$rootfs/tmp"

install -m 0755 "$binary" "$rootfs/usr/local/bin/spillway"
if command -v strip >/dev/null; then
    strip "$rootfs/usr/local/bin/spillway"
fi

# Every library the dynamic loader resolves for the binary, and the loader
# itself, copied to the same path (following symlinks to the real files).
ldd "$binary" | awk '
    $2 == "=>" && $3 ~ /^\// { print $3 }
    $1 ~ /^\// { print $1 }
' | sort -u | while read -r lib; do
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
done
if ldd "$binary" | grep -q "not found"; then
    echo "$0: unresolved libraries:" >&2
    ldd "$binary" | grep "not found" >&2
    exit 69
fi

ca=/etc/ssl/certs/ca-certificates.crt
[ -s "$ca" ] || { echo "$0: no CA bundle at $ca (install ca-certificates)" >&2; exit 69; }
cp -L "$ca" "$rootfs$ca"

cat > "$rootfs/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
PASSWD
cat > "$rootfs/etc/group" <<'GROUP'
root:x:0:
nonroot:x:65532:
GROUP
