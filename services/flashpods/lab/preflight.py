"""What the lab needs from the machine, checked before touching anything.

Each missing piece becomes one line naming it, so `up` fails with a clear message
instead of half-building the lab.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from flashpods import host_programs
from flashpods.lab.proc import LabError

# The lab runs our services and rootful podman (and checks podman's own helpers too: a
# machine without podman's init failed every job, not `up`).
PROGRAMS = host_programs.RUNTIME + host_programs.PODMAN


@dataclass(frozen=True)
class Check:
    what: str
    ok: bool


def kernel_checks() -> list[Check]:
    return [
        Check("network namespaces (/proc/self/ns/net)", Path("/proc/self/ns/net").exists()),
        Check("TUN device /dev/net/tun (wireguard-go)", Path("/dev/net/tun").exists()),
        Check("cgroup filesystem (/sys/fs/cgroup)", Path("/sys/fs/cgroup").is_dir()),
    ]


def program_checks() -> list[Check]:
    return [Check(f"program {name}", shutil.which(name) is not None) for name in PROGRAMS]


def require_root() -> None:
    if os.geteuid() != 0:
        raise LabError(
            "flashpods-lab needs root (network namespaces, nftables, rootful "
            "podman); run it with sudo"
        )


def require(checks: list[Check]) -> None:
    missing = [c.what for c in checks if not c.ok]
    if missing:
        raise LabError("missing: " + "; ".join(missing) + " (run scripts/setup.sh)")
