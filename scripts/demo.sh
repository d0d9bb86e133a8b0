#!/usr/bin/env bash
# Bring up the lab (laptop + host + internet namespaces, WireGuard, firewall, rsyncd,
# SPIRE, token service, API) and run a real job end to end from the laptop: a worker,
# then a sub-agent (Claude Code against the lab's scripted model service) pushing a branch.
source "$(dirname "$0")/lib.sh"
bash "$REPO/scripts/setup.sh"
export PATH="$VENV/bin:$PATH"
flashpods-lab up
flashpods-lab demo
flashpods-lab demo --agent
