#!/usr/bin/env bash
# Builds the product's three images (operator, hub, session) from their Dockerfiles with buildah,
# without a container engine or a registry, and writes each one as an image archive that
# `ctr images import` (containerd) and `docker load` both take. Prints the archives' directory.
#
# Nothing can be pulled here, so:
#  - the base images the Dockerfiles name, debian:bookworm-slim and
#    gcr.io/distroless/cc-debian12:nonroot, are made from Debian's packages with mmdebstrap and
#    stored under those names (the distroless one the way distroless does it: the packages'
#    files unpacked, no shell, no package manager, the nonroot user 65532);
#  - the binaries come from the host's release build (the Dockerfiles' BINARY_FROM=host), since
#    no rust:* image can be pulled.
# Cached by content under a versioned directory: the base images by this script's text, the
# layers by buildah's layer cache, the archives by image ID.
#
#   tests/images/build.sh [release-binaries-dir]    default: $CARGO_TARGET_DIR/release
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
binaries=${1:-${CARGO_TARGET_DIR:-$root/target}/release}
cache="${WAO_IMAGES_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/whatsapp-operator}/images-v1"
out="$cache/archives"
mirror=${WAO_DEBIAN_MIRROR:-http://deb.debian.org}
tag=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$root/charts/whatsapp-operator/Chart.yaml")
log() { echo "[images] $*" >&2; }

storage=(--root "$cache/storage" --runroot "$cache/run" --storage-driver overlay)
bah() { buildah "${storage[@]}" "$@"; }

sources=(
  "deb $mirror/debian bookworm main"
  "deb $mirror/debian bookworm-updates main"
  "deb $mirror/debian-security bookworm-security main"
)

# Imports a root filesystem tarball as image $2, with extra `buildah config` arguments; a
# function named by WAO_FINISH (if set) edits the mounted root first.
import_rootfs() {
  local tarball=$1 name=$2; shift 2
  local c mnt
  c=$(bah from scratch)
  bah add "$c" "$tarball" / >/dev/null
  if [ -n "${WAO_FINISH:-}" ]; then
    mnt=$(bah mount "$c")
    "$WAO_FINISH" "$mnt"
    bah umount "$c" >/dev/null
  fi
  bah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@" "$c"
  bah commit -q --rm "$c" "$name" >/dev/null
}

# debian:bookworm-slim: Debian's minimal base, without documentation, as the official slim image.
base_slim() {
  local rootfs="$cache/bases/slim.tar"
  mmdebstrap --quiet --mode=root --variant=minbase --format=tar \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    bookworm "$rootfs" "${sources[@]}"
  import_rootfs "$rootfs" docker.io/library/debian:bookworm-slim --cmd /bin/bash
}

# gcr.io/distroless/cc-debian12:nonroot: glibc and libgcc unpacked (not installed: no
# maintainer scripts, so no shell is needed or present), CA certificates, the nonroot user.
base_distroless() {
  local rootfs="$cache/bases/distroless.tar"
  mmdebstrap --quiet --mode=root --variant=extract --include=libc6,libgcc-s1,netbase --format=tar \
    bookworm "$rootfs" "${sources[@]}"
  WAO_FINISH=finish_distroless import_rootfs "$rootfs" gcr.io/distroless/cc-debian12:nonroot \
    --user 65532:65532 --workingdir /home/nonroot --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
}

# What distroless adds to the packages' files: users, CA certificates, writable /tmp; and what
# it leaves out: the package manager's state and documentation.
finish_distroless() {
  local r=$1
  rm -rf "$r"/etc/apt "$r"/etc/dpkg "$r"/var/lib/apt "$r"/var/cache/apt "$r"/var/lib/dpkg "$r"/usr/share/doc "$r"/usr/share/man
  mkdir -p "$r"/etc/ssl/certs "$r"/home/nonroot "$r"/root "$r"/tmp
  cp /etc/ssl/certs/ca-certificates.crt "$r"/etc/ssl/certs/
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$r"/etc/passwd
  printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' > "$r"/etc/group
  chown 65532:65532 "$r"/home/nonroot
  chmod 700 "$r"/root
  chmod 1777 "$r"/tmp
  local shell
  for shell in bin/sh bin/bash bin/dash usr/bin/sh usr/bin/bash usr/bin/dash; do
    [ ! -e "$r/$shell" ] || { log "a shell slipped into the distroless base: $shell"; exit 1; }
  done
}

bases() {
  local key
  key=$(printf '%s\n' "$(sed -n '/^base_slim()/,/^}/p;/^base_distroless()/,/^}/p;/^finish_distroless()/,/^}/p;/^import_rootfs()/,/^}/p' "$0")" "${sources[@]}" | sha256sum | cut -c1-16)
  if [ "$(cat "$cache/bases/key" 2>/dev/null)" = "$key" ] \
    && bah inspect --type image docker.io/library/debian:bookworm-slim >/dev/null 2>&1 \
    && bah inspect --type image gcr.io/distroless/cc-debian12:nonroot >/dev/null 2>&1; then
    return
  fi
  local t0=$SECONDS
  mkdir -p "$cache/bases"
  base_slim
  base_distroless
  echo "$key" > "$cache/bases/key"
  rm -f "$cache"/bases/*.tar
  log "base images made from Debian's packages in $((SECONDS - t0))s"
}

# Builds one image from its Dockerfile and writes its archive (when its ID changed).
image() {
  local dir=$1 name=$2 t0=$SECONDS ref id
  ref="ghcr.io/leadmaster/$name:$tag"
  bah bud --quiet --layers --format=docker --pull=never --network=host --build-arg BINARY_FROM=host \
    -f "$root/$dir/Dockerfile" -t "$ref" "$root" >/dev/null
  id=$(bah inspect --type image --format '{{.FromImageID}}' "$ref")
  if [ "$(cat "$out/$name.id" 2>/dev/null)" != "$id" ]; then
    rm -f "$out/$name.tar"
    bah push --quiet "$ref" "docker-archive:$out/$name.tar:$ref"
    echo "$id" > "$out/$name.id"
  fi
  log "$ref: $(bah images --format '{{.Size}}' "$ref" | head -1) (${id:0:12}, $((SECONDS - t0))s)"
}

# An image of one static binary on an empty root, as user $4, written to $out/$1.tar unless
# the binary is unchanged.
binary_image() {
  local name=$1 ref=$2 binary=$3 user=$4 id c
  id=$(sha256sum < "$binary" | cut -c1-16)
  if [ "$(cat "$out/$name.key" 2>/dev/null)" = "$id" ] && [ -f "$out/$name.tar" ]; then return; fi
  c=$(bah from scratch)
  bah copy "$c" "$binary" "/$name" >/dev/null
  bah config --entrypoint "[\"/$name\"]" --user "$user" "$c"
  bah commit -q --rm "$c" "$ref" >/dev/null
  rm -f "$out/$name.tar"
  bah push --quiet "$ref" "docker-archive:$out/$name.tar:$ref"
  echo "$id" > "$out/$name.key"
  log "$ref"
}

# registry.k8s.io/pause, the pod sandbox a real node's containerd starts: built from the source
# that ships in the Kubernetes module the control plane is built from.
pause() {
  local src work
  src="$(cd "$root/tests/cluster" && go mod download -json k8s.io/kubernetes | sed -n 's/.*"Dir": "\(.*\)",/\1/p')/build/pause/linux/pause.c"
  work=$(mktemp -d)
  gcc -Os -static -DVERSION=v3.10.1 -o "$work/pause" "$src"
  strip "$work/pause"
  binary_image pause registry.k8s.io/pause:3.10.1 "$work/pause" 65535:65535
  rm -rf "$work"
}

# The real node's cluster DNS: CoreDNS, built by tests/cluster/build.sh.
coredns() {
  local bin
  bin="$("$root/tests/cluster/build.sh")/coredns"
  binary_image coredns "registry.k8s.io/coredns/coredns:$("$bin" -version | sed -n 's/^CoreDNS-/v/p')" "$bin" 65532:65532
}

mkdir -p "$cache" "$out" "$root/.wao/bin"
for b in whatsapp-operator whatsapp-hub whatsapp-session; do
  [ -x "$binaries/$b" ] || { log "no $binaries/$b: build the release binaries first (./dev images does)"; exit 1; }
  install -m 0755 "$binaries/$b" "$root/.wao/bin/$b"
done
bases
image operator whatsapp-operator
image hub whatsapp-hub
image session-pod whatsapp-session
pause
coredns
echo "$out"
