"""Who is on the other end of a connection, and how many connections each may hold.

A *caller* is the job container a connection comes from, not its uid: all containers of
one podman user share uids (rootless: the flashpods user and its subordinate ids; the
lab's rootful podman: root), so a uid key would let one job starve every other. The
kernel names the connecting process (SO_PEERCRED); its cgroup (`/proc/<pid>/cgroup`,
world-readable) holds podman's `libpod-<64 hex>` scope, which a job cannot leave (its
cgroup filesystem is read-only). Host processes (the API, an operator's curl) have no
such scope and count per uid.
"""

from __future__ import annotations

import re
import socket
import struct
import threading
from dataclasses import dataclass, field

_LIBPOD_SCOPE = re.compile(r"libpod-([0-9a-f]{64})(?:\.scope)?")
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def caller_key(uid: int, cgroup_text: str | None) -> str:
    """`container:<id>` for a process in a podman container, else `uid:<uid>`."""
    if cgroup_text:
        match = _LIBPOD_SCOPE.search(cgroup_text)
        if match:
            return f"container:{match[1]}"
    return f"uid:{uid}"


def peer_caller(conn: socket.socket) -> str:
    pid, uid, _gid = _UCRED.unpack(
        conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    )
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            cgroup_text: str | None = f.read(65536)
    except OSError:  # gone already, or /proc hidden: count it by uid
        cgroup_text = None
    return caller_key(uid, cgroup_text)


@dataclass
class ConnectionBudget:
    """At most `per_caller` open connections per caller (thread-safe)."""

    per_caller: int
    _open: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, caller: str) -> bool:
        with self._lock:
            held = self._open.get(caller, 0)
            if held >= self.per_caller:
                return False
            self._open[caller] = held + 1
            return True

    def give_back(self, caller: str) -> None:
        with self._lock:
            held = self._open.get(caller, 0) - 1
            if held > 0:
                self._open[caller] = held
            else:
                self._open.pop(caller, None)
