"""Did the kernel OOM-kill anything in a container's memory cgroup?

podman's State.OOMKilled is unreliable before podman 5 (conmon 2.1 writes its `oom` flag
file into its working directory, not where podman 4 looks: containers/podman#13102), so
the runtime watches the container's memory cgroup itself while the container runs:

- cgroup v1: `memory.oom_control` has an `oom_kill` counter; when we may write
  `cgroup.event_control` (root) an eventfd wakes us the moment the memcg goes under OOM,
  before podman removes the cgroup; otherwise (the API runs unprivileged next to a
  rootful podman, as in the lab) the counter is polled every 50 ms, and the peak usage
  too: a SIGKILL (exit 137) of a container whose memory peaked at its limit is counted as
  an OOM kill even if podman removed the cgroup before a poll saw the counter move.
- cgroup v2: `memory.events` has `oom_kill`; it is polled (it is also hierarchical, so a
  kill in a sub-cgroup of the container counts).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
POLL_SECONDS = 0.05
EVENT_WAIT_SECONDS = 0.2
NEAR_LIMIT = 0.97
# (peak usage, limit) per cgroup version.
_USAGE_FILES = {
    "memory.oom_control": ("memory.max_usage_in_bytes", "memory.limit_in_bytes"),
    "memory.events": ("memory.peak", "memory.max"),
}


def memory_counter_file(proc_cgroup: str, cgroup_root: Path = CGROUP_ROOT) -> Path | None:
    """The file holding the oom_kill counter for a /proc/<pid>/cgroup text."""
    unified = None
    for line in proc_cgroup.splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return cgroup_root / "memory" / path.lstrip("/") / "memory.oom_control"
        if controllers == "" and line.startswith("0::"):
            unified = cgroup_root / path.lstrip("/") / "memory.events"
    return unified


def oom_kill_count(text: str) -> int:
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value)
    return 0


def near_limit(peak_text: str, limit_text: str) -> bool:
    """Did usage peak at (almost) the limit? False when there is no limit."""
    try:
        peak, limit = int(peak_text), int(limit_text)
    except ValueError:
        return False  # "max": unlimited
    return 0 < limit < (1 << 62) and peak >= limit * NEAR_LIMIT


class OomWatch:
    def __init__(self, pid: int) -> None:
        self.oom_killed = False
        self.near_limit = False
        self._stop = threading.Event()
        # Wakes the thread out of its wait for the cgroup's event at stop(): the container
        # has ended, and its cgroup (whose removal would wake it) may outlive it a while.
        self._wake = os.eventfd(0, os.EFD_CLOEXEC)
        self._file: Path | None = None
        try:
            self._file = memory_counter_file(Path(f"/proc/{pid}/cgroup").read_text())
        except (OSError, ValueError):
            log.warning("no memory cgroup found for pid %d; OOM detection relies on podman", pid)
        self._thread = threading.Thread(target=self._run, name=f"oom-{pid}", daemon=True)

    def start(self) -> None:
        if self._file is not None:
            self._thread.start()

    def stop(self, exit_code: int | None) -> bool:
        """The container ended with exit_code: was it OOM-killed?"""
        self._stop.set()
        if self._wake >= 0:
            os.eventfd_write(self._wake, 1)
        if self._thread.is_alive():
            self._thread.join(2)
        if not self._thread.is_alive() and self._wake >= 0:
            os.close(self._wake)
            self._wake = -1
        self._check()
        return self.oom_killed or (self.near_limit and exit_code == 137)

    def _check(self) -> None:
        if self._file is None or self.oom_killed:
            return
        # OSError: the cgroup is gone with the container.
        with contextlib.suppress(OSError, ValueError):
            self.oom_killed = oom_kill_count(self._file.read_text()) > 0
        if not self.near_limit:
            peak_name, limit_name = _USAGE_FILES[self._file.name]
            with contextlib.suppress(OSError):
                peak = (self._file.parent / peak_name).read_text()
                limit = (self._file.parent / limit_name).read_text()
                self.near_limit = near_limit(peak.strip(), limit.strip())

    def _run(self) -> None:
        assert self._file is not None
        event_fd = self._register_eventfd(self._file)
        events = select.poll()  # not select(): the API may hold more than 1024 descriptors
        if event_fd is not None:
            events.register(event_fd, select.POLLIN)
            events.register(self._wake, select.POLLIN)
        try:
            while not self._stop.is_set() and not self.oom_killed:
                self._check()
                if event_fd is None:
                    self._stop.wait(POLL_SECONDS)
                    continue
                ready = [fd for fd, _ in events.poll(EVENT_WAIT_SECONDS * 1000)]
                if event_fd in ready:
                    os.eventfd_read(event_fd)
                    # The event fires as the memcg goes under OOM, before the kill is
                    # counted, and once more when the cgroup is removed: an event while
                    # the cgroup still exists is the OOM (conmon decides the same way).
                    if self._file.exists():
                        self.oom_killed = True
        finally:
            if event_fd is not None:
                os.close(event_fd)

    @staticmethod
    def _register_eventfd(counter_file: Path) -> int | None:
        """cgroup v1 OOM notification; None where not possible (v2, or not root)."""
        if counter_file.name != "memory.oom_control":
            return None
        try:
            control = os.open(counter_file, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        event_fd = os.eventfd(0, os.EFD_CLOEXEC)
        try:
            (counter_file.parent / "cgroup.event_control").write_text(f"{event_fd} {control}")
        except OSError:
            os.close(event_fd)
            return None
        finally:
            os.close(control)
        return event_fd
