"""Runs last (conftest orders it): `down` leaves nothing behind — no lab namespaces,
processes, containers of instance lab, mounts or interfaces — and is idempotent."""

from __future__ import annotations

from pathlib import Path

from flashpods.lab import lab
from flashpods.lab.topology import STATE_DIR
from lab_helpers import unit_status


def _wireguard_go_pids() -> list[int]:
    pids = []
    for pidfile in STATE_DIR.glob("wireguard-go.*.pid"):
        pids.append(int(pidfile.read_text()))
    return pids


def test_down_leaves_nothing_behind(lab_up) -> None:
    pids = [int(u["pid"]) for u in unit_status().values() if u["pid"]]
    pids += _wireguard_go_pids()
    pids.append(int((STATE_DIR / "supervisor.pid").read_text()))
    assert len(pids) >= 10
    lab.down()
    left = lab.leftovers(pids)
    assert left.empty(), left
    assert not STATE_DIR.exists()
    for sock in (
        "/run/flashpods/token.sock",
        "/run/flashpods/podman.sock",
        "/run/spire/sockets/agent.sock",
    ):
        assert not Path(sock).exists()
    lab.down()  # again: nothing to do, no error
    assert lab.leftovers(pids).empty()
