#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine as root: set-up (cached), static checks,
# unit tests, real-component tests (podman, SPIRE) and the lab's end-to-end suite.
source "$(dirname "$0")/lib.sh"
bash "$REPO/scripts/setup.sh"
export PATH="$VENV/bin:$PATH"
cd "$REPO"
start=$SECONDS
log "static checks: ruff, mypy"
ruff check .
ruff format --check .
mypy
log "pytest: unit, real components, lab end to end"
# pytest exits 5 when it collected nothing; `set -e` turns that into a failure too.
python -m pytest -p no:cacheprovider "$@"
log "test suite finished in $((SECONDS - start)) s"
