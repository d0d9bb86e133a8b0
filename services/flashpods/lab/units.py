"""Unit definitions the lab's supervisor runs: the part of a systemd unit the lab needs.

A Unit is pure data (JSON round-trip), so `up` can hand the supervisor a file and the
tests can read exactly what was started.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Readiness:
    """When a started unit counts as up (Type=notify stand-in).

    kind: "exit" (oneshot: exited 0), "unix" (a unix socket accepts a connection),
    "listen" (a TCP port is listening inside `netns`), "command" (argv exits 0).
    """

    kind: str
    path: str = ""
    netns: str = ""
    port: int = 0
    argv: tuple[str, ...] = ()


@dataclass(frozen=True)
class FileMode:
    """Owner and mode a file must get (ExecStartPost=chown/chmod, or SocketUser/Mode)."""

    path: str
    user: str
    group: str
    mode: str


@dataclass(frozen=True)
class Unit:
    name: str
    argv: tuple[str, ...]
    env: dict[str, str]
    after: tuple[str, ...]
    ready: Readiness
    oneshot: bool = False
    # systemd's Restart=always/RestartSec; the lab uses a short delay (tests wait on it).
    restart_sec: float = 1.0
    ready_timeout: float = 90.0
    # ExecStartPre: commands run (in order, each must exit 0) before every start.
    pre_start: tuple[tuple[str, ...], ...] = ()
    post_start: tuple[FileMode, ...] = ()
    # A listening unix socket the supervisor creates once and passes as fd 3
    # (LISTEN_FDS=1), like a systemd .socket unit: its inode survives restarts.
    socket: FileMode | None = None
    user: str = "root"
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Unit:
        ready = Readiness(**{**data["ready"], "argv": tuple(data["ready"].get("argv", ()))})
        socket = FileMode(**data["socket"]) if data.get("socket") else None
        return Unit(
            name=data["name"],
            argv=tuple(data["argv"]),
            env=dict(data["env"]),
            after=tuple(data["after"]),
            ready=ready,
            oneshot=bool(data.get("oneshot", False)),
            restart_sec=float(data.get("restart_sec", 1.0)),
            ready_timeout=float(data.get("ready_timeout", 90.0)),
            pre_start=tuple(tuple(argv) for argv in data.get("pre_start", ())),
            post_start=tuple(FileMode(**m) for m in data.get("post_start", ())),
            socket=socket,
            user=data.get("user", "root"),
            description=data.get("description", ""),
        )


def start_order(
    units: list[Unit], known_targets: frozenset[str] = frozenset({"network.target"})
) -> list[Unit]:
    """Topological order by `after` (stable: the given order breaks ties).

    An `after` naming neither a unit nor a known target is an error, as is a cycle,
    so a typo in the deployment data cannot silently reorder start-up.
    """
    by_name = {u.name: u for u in units}
    for unit in units:
        for dep in unit.after:
            if dep not in by_name and dep not in known_targets:
                raise ValueError(f"unit {unit.name} is after unknown unit {dep}")
    ordered: list[Unit] = []
    placed: set[str] = set()
    remaining = list(units)
    while remaining:
        ready = [u for u in remaining if all(d in placed or d not in by_name for d in u.after)]
        if not ready:
            raise ValueError("cycle in unit order: " + ", ".join(u.name for u in remaining))
        for unit in ready:
            ordered.append(unit)
            placed.add(unit.name)
            remaining.remove(unit)
    return ordered


def save(units: list[Unit], path: Path) -> None:
    path.write_text(json.dumps([u.to_dict() for u in units], indent=2) + "\n")


def load(path: Path) -> list[Unit]:
    return [Unit.from_dict(d) for d in json.loads(path.read_text())]
