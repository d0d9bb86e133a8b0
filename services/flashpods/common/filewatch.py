"""Wake when a file is written to: inotify IN_MODIFY on one file, through libc.

The standard library has no inotify. A watcher that cannot be had (no inotify, the
per-user instance limit reached, the file not there yet) leaves `fd` None or the file
unwatched; callers keep a timeout as the fallback, so a missed wake costs latency, never
data.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

# <sys/inotify.h>
IN_MODIFY = 0x00000002
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

# The interpreter's own libc, already loaded (find_library would run ldconfig or a
# compiler). Only foreign calls, no callbacks: nothing needs memory both writable and
# executable, so systemd's MemoryDenyWriteExecute= allows it; @system-service includes
# @file-system, which lists inotify_init1/add_watch/rm_watch (systemd seccomp-util.c).
_libc = ctypes.CDLL(None, use_errno=True)
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]


class FileWatch:
    """One inotify instance watching at most one file (the one at `watch`'s path then)."""

    def __init__(self) -> None:
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        self.fd: int | None = fd if fd >= 0 else None
        self._wd: int | None = None

    def watch(self, path: Path) -> bool:
        """Watch the file now at `path` (instead of any earlier one); False if it cannot
        be watched (gone, unreadable, no inotify)."""
        if self.fd is None:
            return False
        if self._wd is not None:
            _libc.inotify_rm_watch(self.fd, self._wd)  # EINVAL if its file is gone: fine
            self._wd = None
            self.drain()  # the old file's events and the IN_IGNORED removing it queues
        wd = _libc.inotify_add_watch(self.fd, os.fsencode(path), IN_MODIFY)
        if wd < 0:
            return False
        self._wd = wd
        return True

    def drain(self) -> None:
        """Read the pending events (they only say "written"; the caller reads the file)."""
        if self.fd is None:
            return
        while True:
            try:
                if not os.read(self.fd, 4096):
                    return
            except BlockingIOError:
                return

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
