"""Which caller a connection counts against (pure) and the per-caller budget."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from flashpods.tokens.callers import ConnectionBudget, caller_key, peer_caller

CID = "4f0c" + "a" * 60

V2_ROOTLESS = (
    f"0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope/container\n"
)
V1_ROOTFUL = (
    f"12:pids:/machine.slice/libpod-{CID}.scope\n1:name=systemd:/machine.slice/libpod-{CID}.scope\n"
)
CGROUPFS = f"0::/libpod_parent/libpod-{CID}\n"


def test_a_container_is_its_own_caller_whatever_its_uid() -> None:
    for text in (V2_ROOTLESS, V1_ROOTFUL, CGROUPFS):
        assert caller_key(1000, text) == f"container:{CID}"
        assert caller_key(0, text) == f"container:{CID}"


def test_host_processes_count_per_uid() -> None:
    assert caller_key(1000, "0::/system.slice/flashpods-api.service\n") == "uid:1000"
    assert caller_key(0, None) == "uid:0"
    assert caller_key(0, "0::/libpod-short.scope\n") == "uid:0"


def test_peer_of_a_socketpair_is_this_process() -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        own = Path("/proc/self/cgroup").read_text()
        assert peer_caller(a) == caller_key(os.getuid(), own)


def test_budget_bounds_each_caller_separately() -> None:
    budget = ConnectionBudget(2)
    assert budget.take("a") and budget.take("a")
    assert not budget.take("a")
    assert budget.take("b")
    budget.give_back("a")
    assert budget.take("a")
    for _ in range(2):
        budget.give_back("a")
    budget.give_back("b")
    assert budget._open == {}
