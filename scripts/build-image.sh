#!/usr/bin/env bash
# The job image, built locally (no registry is reachable): Debian bookworm minbase via
# debootstrap plus what the container entrypoints need, imported into rootful podman as
# localhost/flashpods-job:latest. The rootfs tarball is cached by a hash of this script.
source "$(dirname "$0")/lib.sh"
IMAGE="localhost/flashpods-job:latest"
PACKAGES="ca-certificates,curl,jq,git,procps,python3-minimal"
KEY="$(sha256sum "$0" | cut -c1-16)"
TARBALL="$CACHE/image/flashpods-job-$KEY.tar"
ID_FILE="$CACHE/image/flashpods-job-$KEY.id"

if [ ! -f "$TARBALL" ]; then
  log "building the job image rootfs with debootstrap (first run only; cached in $TARBALL)"
  mkdir -p "$CACHE/image"
  root="$(mktemp -d "$CACHE/image/rootfs.XXXXXX")"
  trap 'rm -rf "$root"' EXIT
  debootstrap --variant=minbase --include="$PACKAGES" bookworm "$root" http://deb.debian.org/debian >"$CACHE/image/debootstrap.log" 2>&1 \
    || die "debootstrap failed; see $CACHE/image/debootstrap.log"
  chroot "$root" apt-get clean
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/tmp/*
  mkdir -p "$root/work" "$root/artifacts"
  # mktemp made the rootfs 0700; as the image's / that locks out every non-root
  # container user (rootless keep-id: "stat /bin/sh: permission denied").
  chmod 0755 "$root"
  tar -C "$root" --numeric-owner -cf "$TARBALL.tmp" .
  mv "$TARBALL.tmp" "$TARBALL"
  # Rootfs tarballs of older versions of this script are never used again.
  find "$CACHE/image" -maxdepth 1 -name 'flashpods-job-*' ! -name "flashpods-job-$KEY.*" -delete
fi

current="$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
if [ -z "$current" ] || [ "$current" != "$(cat "$ID_FILE" 2>/dev/null)" ]; then
  log "importing $IMAGE into podman"
  podman import --change 'CMD ["/bin/sh"]' --change 'WORKDIR /work' "$TARBALL" "$IMAGE" >/dev/null
  podman image inspect --format '{{.Id}}' "$IMAGE" > "$ID_FILE"
fi
