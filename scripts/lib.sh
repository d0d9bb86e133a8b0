# Shared by the set-up scripts. Caches live outside the repository so a fresh clone
# (CI) reuses the slow steps: the SPIRE Go build, the job image, the Python venv.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${FLASHPODS_CACHE_DIR:-/var/cache/flashpods}"
VENV="$CACHE/venv"
export REPO CACHE VENV
log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (the lab needs network namespaces, nftables and rootful podman)"
mkdir -p "$CACHE"
