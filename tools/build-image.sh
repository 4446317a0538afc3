#!/usr/bin/env bash
# Builds Weir's image — what the Dockerfile builds — without a Docker engine, as an OCI
# archive (an OCI image layout in a tar, which `skopeo copy oci-archive:…`, `podman load`
# and `crane push` take):
#
#   tools/build-image.sh BIN_DIR OUT [TAG]
#
# BIN_DIR holds weir-operator, weir-worker and weir (target/release for `make image`).
# The filesystem is the Dockerfile's: the three binaries in /usr/local/bin, and from
# this Debian 12 machine the shared libraries they load (as distroless/cc-debian12 has
# them), CA certificates, and /etc/passwd and /etc/group naming root and nonroot (65532).
# No shell. The config runs weir-operator as 65532:65532. The layout is written by umoci,
# which `make tools` builds.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
umoci=${UMOCI:-${WEIR_TOOLS_DIR:-$root/.tools}/bin/umoci}
[ $# -ge 2 ] || { echo "usage: $0 BIN_DIR OUT [TAG]" >&2; exit 2; }
bin_dir=$1 out=$2
tag=${3:-$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n1)}
binaries=(weir-operator weir-worker weir)

work=$(mktemp -d "${TMPDIR:-/tmp}/weir-image.XXXXXX")
trap 'rm -rf "$work"' EXIT
rootfs=$work/rootfs
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc/ssl/certs" "$rootfs/home/nonroot" "$rootfs/tmp"
chmod 1777 "$rootfs/tmp"
chown 65532:65532 "$rootfs/home/nonroot"

for b in "${binaries[@]}"; do
  [ -x "$bin_dir/$b" ] || { echo "build-image: $bin_dir/$b is missing (build it first)" >&2; exit 1; }
  # Line tables only help a debugger, which the image does not have.
  strip --strip-debug -o "$rootfs/usr/local/bin/$b" "$bin_dir/$b"
  chmod 0755 "$rootfs/usr/local/bin/$b"
done

# The shared libraries the binaries load (and the dynamic loader), at the same paths.
for b in "${binaries[@]}"; do
  ldd "$rootfs/usr/local/bin/$b" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'
done | sort -u | while read -r lib; do
  mkdir -p "$rootfs$(dirname "$lib")"
  cp -L "$lib" "$rootfs$lib"
done

cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
cat > "$rootfs/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
PASSWD
cat > "$rootfs/etc/group" <<'GROUP'
root:x:0:
nonroot:x:65532:
GROUP
echo "hosts: files dns" > "$rootfs/etc/nsswitch.conf"

layout=$work/layout
"$umoci" init --layout "$layout"
"$umoci" new --image "$layout:$tag"
"$umoci" insert --image "$layout:$tag" "$rootfs" /
"$umoci" config --image "$layout:$tag" \
  --os linux --architecture amd64 \
  --config.user 65532:65532 \
  --config.entrypoint /usr/local/bin/weir-operator \
  --config.workingdir / \
  --config.env PATH=/usr/local/bin \
  --config.env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
  --config.label org.opencontainers.image.title=weir \
  --config.label org.opencontainers.image.source=https://github.com/weir-dev/weir \
  --config.label "org.opencontainers.image.version=$tag"
"$umoci" gc --layout "$layout"
mkdir -p "$(dirname "$out")"
tar -C "$layout" -cf "$out" .
echo "build-image: wrote $out (tag $tag)"
