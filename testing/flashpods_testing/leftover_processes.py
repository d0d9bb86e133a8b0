"""pytest plugin: a session that leaves processes behind fails, and they are killed.

At the session's end (every fixture torn down) a process is a leftover if it is still a
child of pytest, or if its command line names a path in this session's basetemp (a
daemon that double-forked or whose wrapper was killed is reparented to init, but its
arguments still point into the test's tmp_path), and so is every descendant of one.
Zombies are not running and are not counted. The lab and shared daemons (podman's
pause process, ...) are neither children of pytest nor started with our paths, so
they are left alone. Registered by the root conftest.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BASETEMP = pytest.StashKey[Path]()


@dataclass(frozen=True)
class Process:
    pid: int
    ppid: int
    state: str
    args: tuple[str, ...]

    def describe(self) -> str:
        return f"pid {self.pid} (ppid {self.ppid}): {' '.join(self.args)}"


def _read(pid: int) -> Process | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None  # it ended while we looked
    # The comm field is in parentheses and may itself contain ") ".
    state, ppid = stat[stat.rindex(")") + 2 :].split(" ", 2)[:2]
    args = tuple(a.decode(errors="replace") for a in cmdline.split(b"\0") if a)
    return Process(pid, int(ppid), state, args)


def processes() -> Iterator[Process]:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (found := _read(int(entry.name))) is not None:
            yield found


def ancestors(pid: int, table: dict[int, Process]) -> set[int]:
    seen: set[int] = set()
    while pid in table and pid not in seen:
        seen.add(pid)
        pid = table[pid].ppid
    return seen


def names_a_path_under(process: Process, directory: Path) -> bool:
    base = str(directory)
    return any(arg.endswith(base) or f"{base}/" in arg for arg in process.args)


def leftovers(own_pid: int, basetemp: Path | None, table: dict[int, Process]) -> list[Process]:
    """The processes this session left behind (pure: decides on a snapshot of /proc)."""
    mine = ancestors(own_pid, table)  # pytest itself and whatever started it
    roots = {
        p.pid
        for p in table.values()
        if p.pid not in mine
        and (p.ppid == own_pid or (basetemp is not None and names_a_path_under(p, basetemp)))
    }
    found = set(roots)
    for process in table.values():
        if process.pid not in mine and ancestors(process.ppid, table) & roots:
            found.add(process.pid)
    return sorted((table[pid] for pid in found if table[pid].state != "Z"), key=lambda p: p.pid)


def stop_all(own_pid: int, basetemp: Path | None) -> list[Process]:
    """SIGSTOP the leftovers until a snapshot finds no new one: a stopped process forks no
    more, and what it forked before shows up as its descendant in the next snapshot (kill
    one while it runs and its fresh child would escape to init, unnamed)."""
    stopped: dict[int, Process] = {}
    while True:
        table = {p.pid: p for p in processes()}
        new = [p for p in leftovers(own_pid, basetemp, table) if p.pid not in stopped]
        if not new:
            return sorted(stopped.values(), key=lambda p: p.pid)
        for process in new:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGSTOP)
            stopped[process.pid] = process


def kill(process: Process, own_pid: int) -> None:
    try:
        os.kill(process.pid, signal.SIGKILL)
        if process.ppid == own_pid:
            os.waitpid(process.pid, 0)  # ours to reap, or it stays a zombie
    except (ProcessLookupError, ChildProcessError):
        pass


@pytest.fixture(scope="session", autouse=True)
def _record_basetemp(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> None:
    request.config.stash[BASETEMP] = tmp_path_factory.getbasetemp().resolve()


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    own_pid = os.getpid()
    left = stop_all(own_pid, session.config.stash.get(BASETEMP, None))
    if not left:
        return
    lines = ["this session left processes running (killed now):"]
    lines += [f"  {p.describe()}" for p in left]
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_sep("!", "processes left behind", red=True, bold=True)
        for line in lines:
            reporter.write_line(line, red=True)
    else:
        print("\n".join(lines), file=sys.stderr)
    for process in left:
        kill(process, own_pid)
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
