#!/usr/bin/env bash
# Builds the ferrocni container image with no registry: a Debian bookworm rootfs made by
# debootstrap from Debian's package mirror (with nftables), imported as a base image, then
# the release binaries added by Containerfile. Needs root, debootstrap and podman
# (apt-get install debootstrap podman). Usage:
#
#   deploy/image/build.sh [TAG]            # default localhost/ferrocni:0.1.0
#   podman save localhost/ferrocni:0.1.0 | ctr -n k8s.io images import -   # on each node (containerd)
#
# The base image is made once and kept (podman image rm localhost/debian-bookworm-minbase to
# rebuild it).
set -euo pipefail
cd "$(dirname "$0")/../.."
TAG="${1:-localhost/ferrocni:0.1.0}"
BASE=localhost/debian-bookworm-minbase:latest
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

for tool in debootstrap podman cargo; do
  command -v "$tool" >/dev/null || { echo "build.sh needs $tool" >&2; exit 1; }
done

if ! podman image exists "$BASE"; then
  rootfs="$(mktemp -d /tmp/ferrocni-rootfs.XXXXXX)"
  trap 'rm -rf "$rootfs"' EXIT
  debootstrap --variant=minbase --include=nftables,ca-certificates bookworm "$rootfs" "$MIRROR"
  # Nothing of apt's caches or lists in the image.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | podman import - "$BASE"
fi

cargo build --release -p overlayd -p plugins --bins
ctx="$(mktemp -d /tmp/ferrocni-image.XXXXXX)"
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/bin"
for b in overlayd overlayctl vxlan bridge host-local loopback portmap firewall tuning bandwidth; do
  cp "target/release/$b" "$ctx/bin/$b"
done
podman build -f deploy/image/Containerfile -t "$TAG" "$ctx"

# The image must run what it holds: every binary started inside its root filesystem (a
# chroot of the mounted image, so no container runtime is needed), with the run-time files
# they need (the C library, nft).
mnt="$(podman image mount "$TAG")"
trap 'podman image unmount "$TAG" >/dev/null; rm -rf "$ctx"' EXIT
chroot "$mnt" /usr/local/bin/overlayd --version
chroot "$mnt" /usr/local/bin/overlayctl --version
chroot "$mnt" /usr/sbin/nft --version
for p in vxlan bridge host-local loopback portmap firewall tuning bandwidth; do
  out="$(chroot "$mnt" env CNI_COMMAND=VERSION "/opt/ferrocni/bin/$p" </dev/null)"
  case "$out" in
    *supportedVersions*) echo "$p: $out" ;;
    *) echo "$p in $TAG does not answer VERSION: $out" >&2; exit 1 ;;
  esac
done
echo "built $TAG"
