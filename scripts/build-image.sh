#!/usr/bin/env bash
# The job image, built locally (no registry is reachable): Debian bookworm minbase via
# debootstrap plus what the container entrypoints need and the Claude Code CLI, imported
# into rootful podman as localhost/flashpods-job:latest. The rootfs tarball is cached by a
# hash of this script (which pins the CLI's version), the npm install by that version.
source "$(dirname "$0")/lib.sh"
IMAGE="localhost/flashpods-job:latest"
PACKAGES="ca-certificates,curl,jq,git,procps,python3-minimal"
# The agent CLI (docs in shared design agent.md): a thin npm wrapper whose postinstall puts
# the optional platform package's native binary (built with Bun) in place. Node runs only
# here, at install time; in the image the binary needs nothing but glibc.
CLAUDE_CODE_VERSION="2.1.197"
CLAUDE_CODE="$CACHE/claude-code-$CLAUDE_CODE_VERSION"
KEY="$(sha256sum "$0" | cut -c1-16)"
TARBALL="$CACHE/image/flashpods-job-$KEY.tar"
ID_FILE="$CACHE/image/flashpods-job-$KEY.id"

# Several test sessions share the image tag and this cache: one builder at a time.
mkdir -p "$CACHE/image"
exec 9>"$CACHE/image/build.lock"
flock 9

if [ ! -x "$CLAUDE_CODE/node_modules/.bin/claude" ]; then
  command -v npm >/dev/null || die "npm (Node.js >= 18) is needed to install the Claude Code CLI"
  log "installing @anthropic-ai/claude-code@$CLAUDE_CODE_VERSION with npm (cached in $CLAUDE_CODE)"
  staging="$(mktemp -d "$CACHE/claude-code.XXXXXX")"
  chmod 0755 "$staging"
  # Not --ignore-scripts / --omit=optional: without the platform package and the postinstall
  # that links its binary there is no runnable agent.
  npm install --prefix "$staging" --no-audit --no-fund --no-save --loglevel=error \
    "@anthropic-ai/claude-code@$CLAUDE_CODE_VERSION" >&2 || die "npm install of the Claude Code CLI failed"
  got="$("$staging/node_modules/.bin/claude" --version </dev/null)" || die "the installed claude does not run"
  [ "$got" = "$CLAUDE_CODE_VERSION (Claude Code)" ] || die "claude --version said '$got'"
  rm -rf "$CLAUDE_CODE"
  mv "$staging" "$CLAUDE_CODE"
  find "$CACHE" -maxdepth 1 -name 'claude-code-*' ! -name "claude-code-$CLAUDE_CODE_VERSION" -exec rm -rf {} +
fi

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
  cp -a "$CLAUDE_CODE/node_modules" "$root/opt/claude-code"
  ln -s /opt/claude-code/@anthropic-ai/claude-code/bin/claude.exe "$root/usr/local/bin/claude"
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
  # Import under a name of its own, then move the tag: a job started meanwhile gets the old
  # image or the new one, never a half-imported one.
  staging_tag="localhost/flashpods-job:import-$$"
  podman import --change 'CMD ["/bin/sh"]' --change 'WORKDIR /work' "$TARBALL" "$staging_tag" >/dev/null
  podman run --rm --pull=never --network=none --user 65534:65534 "$staging_tag" claude --version </dev/null >/dev/null \
    || { podman rmi "$staging_tag" >/dev/null; die "claude --version fails in the new image as a non-root user"; }
  podman tag "$staging_tag" "$IMAGE"
  podman untag "$staging_tag" "$staging_tag"
  podman image inspect --format '{{.Id}}' "$IMAGE" > "$ID_FILE"
  # The replaced image (~0.5 GB), unless a container still uses it.
  [ -z "$current" ] || podman rmi "$current" >/dev/null 2>&1 || true
fi
