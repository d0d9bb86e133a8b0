"""Did the job fill one of its size-limited scratch filesystems?

The kernel enforces the limit (a write past it fails with ENOSPC inside the job); this
only notices that it happened, so the job's outcome can say so. A directory descriptor
is opened on each scratch mount through the container's PID 1 (`/proc/<pid>/root/tmp`)
while it runs; `fstatvfs` on it is polled, and once more after the container ended (the
descriptor keeps the tmpfs reachable until it is closed, so a fill just before the exit
is seen too). A job that fills its scratch and then deletes files between two polls may
go unnoticed; the limit itself held all the same.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25


def is_full(free_blocks: int) -> bool:
    return free_blocks == 0


class DiskWatch:
    def __init__(self, pid: int, targets: list[str]) -> None:
        self.filled: list[str] = []  # targets seen full, in the order of `targets`
        self._stop = threading.Event()
        self._fds: dict[str, int] = {}
        for target in targets:
            try:
                self._fds[target] = os.open(
                    f"/proc/{pid}/root{target}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
                )
            except OSError as exc:
                log.warning("cannot watch %s of pid %d: %s", target, pid, exc.strerror)
        self._thread = threading.Thread(target=self._run, name=f"disk-{pid}", daemon=True)

    def start(self) -> None:
        if self._fds:
            self._thread.start()

    def stop(self) -> list[str]:
        """The container ended: which scratch filesystems were full at some poll."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)
        self._check()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        return list(self.filled)

    def _check(self) -> None:
        for target, fd in self._fds.items():
            if target in self.filled:
                continue
            try:
                if is_full(os.fstatvfs(fd).f_bavail):
                    self.filled.append(target)
            except OSError:
                continue

    def _run(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            self._check()
