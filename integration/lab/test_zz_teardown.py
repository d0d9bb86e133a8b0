"""Runs last (conftest orders it): `up` repairs a lab whose supervisor crashed; `down`
leaves nothing behind — no lab namespaces, processes, containers of instance lab, mounts
or interfaces — and is idempotent."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from flashpods.lab import lab
from flashpods.lab.proc import alive
from flashpods.lab.topology import STATE_DIR
from lab_helpers import Laptop, unit_status, wait_for


def _wireguard_go_pids() -> list[int]:
    pids = []
    for pidfile in STATE_DIR.glob("wireguard-go.*.pid"):
        pids.append(int(pidfile.read_text()))
    return pids


def test_up_repairs_a_lab_whose_supervisor_was_killed(lab_up, laptop: Laptop) -> None:
    old = [int(u["pid"]) for u in unit_status().values() if u["pid"]]
    supervisor = int((STATE_DIR / "supervisor.pid").read_text())
    os.kill(supervisor, signal.SIGKILL)
    wait_for(lambda: not alive(supervisor), 10, "the supervisor to die")
    lab.up()
    status = unit_status()
    assert all(u["state"] in ("active", "exited") for u in status.values())
    assert not [pid for pid in old if alive(pid)]  # the orphans were ended, not doubled

    def health() -> str:
        with laptop.client() as fp:
            return str(fp.health().status)

    assert laptop.call(health) == "healthy"


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
