#!/usr/bin/env bash
# SPIRE server + agent from the Go module proxy, pinned through a small tools module,
# cached in $CACHE/spire-<version>/bin. The server needs CGO (sqlite3 datastore).
source "$(dirname "$0")/lib.sh"
VERSION="$(nix-instantiate --eval --strict --json -A spire.version "$REPO/modules/data/flashpods.nix" | tr -d '"')"
OUT="$CACHE/spire-$VERSION"
if [ -x "$OUT/bin/spire-server" ] && [ -x "$OUT/bin/spire-agent" ]; then
  exit 0
fi
log "building SPIRE v$VERSION (first run only; cached in $OUT)"
# CGO needs a C compiler and libc headers; a fresh minimal Debian may have neither.
if ! command -v gcc >/dev/null ||
  ! dpkg-query -W -f='${Status}' libc6-dev 2>/dev/null | grep -q "install ok installed"; then
  log "installing gcc and libc6-dev (the server's sqlite3 datastore needs CGO)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libc6-dev >/dev/null
fi
mkdir -p "$OUT/tools"
export GOPATH="$CACHE/gopath" GOMODCACHE="$CACHE/gopath/pkg/mod" GOCACHE="$CACHE/gocache"
export GOFLAGS=-mod=mod GOTOOLCHAIN=local
cd "$OUT/tools"
[ -f go.mod ] || printf 'module flashpods.local/spire-tools\n\ngo 1.25.3\n' > go.mod
go get -tool "github.com/spiffe/spire/cmd/spire-server@v$VERSION"
go get -tool "github.com/spiffe/spire/cmd/spire-agent@v$VERSION"
CGO_ENABLED=1 GOBIN="$OUT/bin.tmp" go install \
  github.com/spiffe/spire/cmd/spire-server github.com/spiffe/spire/cmd/spire-agent
rm -rf "$OUT/bin" && mv "$OUT/bin.tmp" "$OUT/bin"
"$OUT/bin/spire-server" --version 2>&1 | head -1
