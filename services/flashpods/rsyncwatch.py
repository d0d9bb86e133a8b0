"""Bound what one rsync transfer writes into an upload while it writes (issue #11 W6):
its bytes and its entries.

rsyncd has no size setting, and RLIMIT_FSIZE bounds each file, not an upload. So the
`uploads` module's `pre-xfer exec` runs `flashpods-rsync-watch LIMIT ENTRIES`: rsync starts it
before the transfer with RSYNC_PID (the daemon process serving the connection),
RSYNC_MODULE_PATH and RSYNC_REQUEST in its environment, and waits for it to exit. It
measures the upload as the transfer finds it (a base's copy, POST /uploads), forks a
detached watcher and exits.

The watcher polls, every POLL_SECONDS, the bytes the transfer's processes have written:
`wchar` of /proc/<pid>/io of RSYNC_PID and its live descendants (the receiver's file
data plus the generator's few protocol bytes; `write_bytes` stays 0 on tmpfs). When the
upload's starting size plus those bytes passes the limit, it cuts the transfer: it
writes MARKER into the upload and SIGKILLs the transfer's processes; the client's rsync
fails and the client reads MARKER (flashpods.client.upload) to say why. An upload that
started from a base's copy is measured first (rsync replaces the base's files, so the
sum overstates the tree) and cut only if the tree is over the limit. The watcher ends
when RSYNC_PID ends.

Entries (files, directories, symlinks: flashpods.common.uploadlimits) cost no bytes and
no counted write (an empty directory still takes a 4 KiB block and an inode), so they
are counted in the tree itself: an EntryWalk lists the upload by descriptor, for
WALK_SLICE of each poll (at most WALK_SLICE / (WALK_SLICE + POLL_SECONDS) of a core,
~9%), resuming where it stopped, and starts again when it has listed everything. Once
its running count passes ENTRIES the transfer is cut as for bytes (the running count of
one walk never exceeds the tree's entries, except an entry rsync moves from a directory
not yet read into one already read, which --delay-updates does and the client does not).
A push naming no single upload is measured against the whole module (an upper bound).

It runs as the daemon's user (root), outside the module's chroot, in a tree the rsync
client controls: it walks and writes by file descriptor without following symlinks,
and writes nothing but MARKER in the upload.
Overshoot: what rsync writes in one poll (20 ms), plus, for an upload started from a
base, in one measurement of its tree; the entries rsync creates while one walk lists the
tree (the walk's CPU time / the ~9% share).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import resource
import select
import signal
import stat
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from flashpods.api.ids import is_upload_id
from flashpods.common.uploadlimits import MARKER, Cut, over

POLL_SECONDS = 0.02
# Seconds of tree walking per poll: the entry count's share of a core stays under
# WALK_SLICE / (WALK_SLICE + POLL_SECONDS), whatever the tree.
WALK_SLICE = 0.002

log = logging.getLogger("flashpods.rsyncwatch")

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_dir(name: str, dir_fd: int | None) -> int:
    """The directory `name` (relative to dir_fd), never through a symlink, its modes
    untouched (flashpods.common.fdtree.open_dir opens up directories it owns)."""
    return os.open(name, _DIR, dir_fd=dir_fd)


@dataclass(frozen=True)
class Transfer:
    """What rsync's pre-xfer environment says about one transfer."""

    pid: int
    module_path: str
    upload_id: str | None  # None: the request names no single upload directory
    receiving: bool  # the daemon writes (the client pushes); a pull writes nothing


def parse_transfer(env: Mapping[str, str]) -> Transfer:
    """Pure: RSYNC_PID, RSYNC_MODULE_PATH, RSYNC_REQUEST ("uploads/upload_x/") and the
    RSYNC_ARG<n> options (the daemon sends only when the client asked it to, --sender)."""
    args = [env[f"RSYNC_ARG{n}"] for n in range(len(env)) if f"RSYNC_ARG{n}" in env]
    options = args[: args.index(".")] if "." in args else args
    request = env.get("RSYNC_REQUEST", "").split(" ")
    parts = request[0].split("/") if len(request) == 1 else []
    upload_id = parts[1] if len(parts) > 1 and is_upload_id(parts[1]) else None
    return Transfer(
        pid=int(env["RSYNC_PID"]),
        module_path=env["RSYNC_MODULE_PATH"],
        upload_id=upload_id,
        receiving="--sender" not in options,
    )


@dataclass(frozen=True)
class Budget:
    """The upload's size when last measured, and the transfer's written bytes then.
    baseline + (written - written_then) never understates the tree: each byte on disk
    since the measurement was written by the transfer."""

    limit: int
    baseline: int
    written_then: int

    def estimate(self, written: int) -> int:
        return self.baseline + written - self.written_then

    def over(self, written: int) -> bool:
        """Pure: whether the tree may be over the limit (then measure it)."""
        return over(self.estimate(written), self.limit)

    def remeasured(self, size: int, written: int) -> Budget:
        return Budget(self.limit, size, written)


def tree_bytes(dir_fd: int) -> int:
    """Bytes of the non-directory entries under an open directory (as finalize counts
    them), by fstatat without following symlinks. Entries that vanish mid-walk (rsync
    renames and deletes while we read) are skipped."""
    size = 0
    stack = [os.dup(dir_fd)]
    while stack:
        fd = stack.pop()
        try:
            with os.scandir(fd) as scan:
                for entry in scan:
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if not stat.S_ISDIR(info.st_mode):
                        size += info.st_size
                        continue
                    with contextlib.suppress(OSError):
                        stack.append(open_dir(entry.name, fd))
        except OSError as exc:  # the directory went away while we read it
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                raise
        finally:
            os.close(fd)
    return size


class EntryWalk:
    """The entries under an open directory (as finalize counts them: everything, no
    symlink followed), counted a slice of time at a time. Directories are opened by
    descriptor, depth first, one open listing per level (a tree rsync can write is at
    most PATH_MAX / 2 levels deep). Entries that vanish mid-walk are skipped."""

    def __init__(self, root_fd: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.root_fd = root_fd
        self.clock = clock
        self.count = 0  # entries listed by the current walk so far
        self.walks = 0  # walks completed
        self.busy = 0.0  # seconds spent walking
        self._open: list[tuple[int, Iterator[os.DirEntry[str]]]] = []

    def step(self, seconds: float) -> bool:
        """Walk for about `seconds`. True when this step finished a walk: `count` is then
        the tree's, and the next step starts the next walk."""
        start = self.clock()
        try:
            return self._walk(start, seconds)
        finally:
            self.busy += self.clock() - start

    def _walk(self, start: float, seconds: float) -> bool:
        if not self._open:
            self.count = 0
            self._enter(os.dup(self.root_fd))
        listed = 0
        while self._open:
            fd, scan = self._open[-1]
            entry = next(scan, None)
            if entry is None:
                self._leave()
                continue
            self.count += 1
            if entry.is_dir(follow_symlinks=False):
                try:
                    self._enter(open_dir(entry.name, fd))
                except OSError as exc:  # gone, or replaced by a file, since listed
                    if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                        raise
            listed += 1
            if listed % 64 == 0 and self.clock() - start >= seconds:
                return False
        self.walks += 1
        return True

    def _enter(self, fd: int) -> None:
        try:
            self._open.append((fd, os.scandir(fd)))
        except OSError:
            os.close(fd)
            raise

    def _leave(self) -> None:
        fd, scan = self._open.pop()
        scan.close()  # type: ignore[attr-defined]
        os.close(fd)

    def close(self) -> None:
        while self._open:
            self._leave()


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found.extend(int(c) for c in f.read().split())
    return found


def transfer_pids(root: int) -> list[int]:
    """root and its descendants (rsync's generator forks the receiver), parents first."""
    found, todo = [], [root]
    while todo:
        pid = todo.pop(0)
        found.append(pid)
        todo.extend(_children(pid))
    return found


def transfer_written(root: int) -> int:
    """The bytes root and its live descendants have written (wchar). The kernel adds a
    reaped child's counts to its parent's at wait(), so each process is read before its
    children are listed: a child reaped meanwhile is counted once (in its parent) or
    not at all for this one reading, never twice."""
    total, todo = 0, [root]
    while todo:
        pid = todo.pop(0)
        count = written_bytes(pid)
        if count is None:
            continue
        total += count
        todo.extend(_children(pid))
    return total


def written_bytes(pid: int) -> int | None:
    """wchar of /proc/<pid>/io, None once the process is gone."""
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key == "wchar":
                    return int(value)
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            # pid (comm) state ppid …: comm may hold spaces and parentheses.
            return int(f.read().rpartition(")")[2].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def kill_transfer(root_fd: int, root: int) -> None:
    """SIGKILL the transfer's processes. Each descendant is pinned by a pidfd and
    checked to still be its parent's child before the signal (no reused pid is hit)."""
    pids = transfer_pids(root)
    parents = {child: _parent(child) for child in pids[1:]}
    for child, parent in parents.items():
        try:
            fd = os.pidfd_open(child)
        except ProcessLookupError:
            continue
        try:
            if _parent(child) == parent and parent in pids:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
        except ProcessLookupError:
            pass
        finally:
            os.close(fd)
    with contextlib.suppress(ProcessLookupError):
        signal.pidfd_send_signal(root_fd, signal.SIGKILL)


def write_marker(upload_fd: int, cut: Cut) -> None:
    """MARKER in the upload (replacing one the client may have planted), never through
    a symlink; the client fetches it over rsync."""
    body = json.dumps(cut.marker()).encode()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with contextlib.suppress(FileNotFoundError):
        os.unlink(MARKER, dir_fd=upload_fd)
    fd = os.open(MARKER, flags, 0o644, dir_fd=upload_fd)
    try:
        os.write(fd, body)
    finally:
        os.close(fd)


class Watch:
    """One transfer: its processes' written bytes against the upload's budget, and the
    entries of its tree against the entry limit."""

    def __init__(self, transfer: Transfer, limit: int, max_entries: int, root_fd: int) -> None:
        self.transfer = transfer
        self.root_fd = root_fd  # a pidfd of RSYNC_PID
        self.max_entries = max_entries
        self.upload_fd = self.open_upload()
        self.walk: EntryWalk | None = None
        written = self.written()
        start = tree_bytes(self.upload_fd) if self.upload_fd is not None else 0
        self.budget = Budget(limit, start, written)
        # A base's copy (POST /uploads): rsync replaces its files, so the bytes written
        # overstate the tree and it is measured before the transfer is cut.
        self.started_with_files = start > 0

    def open_upload(self) -> int | None:
        if self.transfer.upload_id is None:
            return None
        module = open_dir(self.transfer.module_path, None)
        try:
            return open_dir(self.transfer.upload_id, module)
        except OSError:  # rsync has not created it yet: measured once it exists
            return None
        finally:
            os.close(module)

    def written(self) -> int:
        return transfer_written(self.transfer.pid)

    def check(self) -> Cut | None:
        """Why the transfer must be cut, if it must: its bytes or its entries."""
        size = self.check_bytes()
        if size is not None:
            return Cut("bytes", self.budget.limit, size)
        return self.check_entries()

    def entry_walk(self) -> EntryWalk | None:
        """The walk of the upload's tree (of the whole module for a push that names no
        single upload), once that directory exists."""
        if self.walk is None:
            if self.transfer.upload_id is None:
                self.walk = EntryWalk(open_dir(self.transfer.module_path, None))
            else:
                if self.upload_fd is None:
                    self.upload_fd = self.open_upload()
                if self.upload_fd is not None:
                    self.walk = EntryWalk(self.upload_fd)
        return self.walk

    def check_entries(self) -> Cut | None:
        """The walk's running count if it passed the entry limit, after one slice."""
        walk = self.entry_walk()
        if walk is None:
            return None
        walk.step(WALK_SLICE)
        if over(walk.count, self.max_entries):
            return Cut("entries", self.max_entries, walk.count)
        return None

    def check_bytes(self) -> int | None:
        """The upload's size if it is over the limit (the transfer must be cut): counted,
        or measured for an upload that started from a base."""
        written = self.written()
        if not self.budget.over(written):
            return None
        if not self.started_with_files:
            # Nothing to rewrite: every byte of the tree was written by this transfer, and
            # a measurement would only let rsync write on meanwhile.
            return self.budget.estimate(written)
        assert self.upload_fd is not None
        size = tree_bytes(self.upload_fd)
        if over(size, self.budget.limit):
            return size
        self.budget = self.budget.remeasured(size, written)
        return None


def watch(state: Watch) -> bool:
    """Until the transfer's process ends (its pidfd turns readable); True if it was cut.
    A watcher that fails cuts the transfer: an unwatched one would be unbounded."""
    poller = select.poll()
    poller.register(state.root_fd, select.POLLIN)
    try:
        while not poller.poll(int(POLL_SECONDS * 1000)):
            reason = state.check()
            if reason is not None:
                cut(state, reason)
                return True
        return False
    except Exception:
        log.exception("watching rsync transfer %d failed; cutting it", state.transfer.pid)
        kill_transfer(state.root_fd, state.transfer.pid)
        raise


def cut(state: Watch, reason: Cut) -> None:
    """The marker first (the client looks for it once its rsync fails), then the kill,
    which happens even if the client's tree refuses the marker."""
    try:
        if state.upload_fd is None:  # rsync created the directory after we started
            state.upload_fd = state.open_upload()
        if state.upload_fd is not None:
            write_marker(state.upload_fd, reason)
    except OSError as exc:
        log.warning("no marker in %s: %s", state.transfer.upload_id, exc)
    kill_transfer(state.root_fd, state.transfer.pid)
    log.warning(
        "rsync transfer %d into %s cut: %d %s, over the upload limit of %d",
        state.transfer.pid,
        state.transfer.upload_id,
        reason.measured,
        reason.unit,
        reason.limit,
    )


def _detach(keep: set[int]) -> None:
    """The watcher's own session, off rsync's descriptors: rsync reads this program's
    stdout to its end before the transfer starts, and the client's socket is not ours."""
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def parse_limits(args: list[str]) -> tuple[int, int]:
    """Pure: LIMIT (bytes) and ENTRIES, both required (a deployment that lost one
    refuses uploads rather than leaving them unbounded)."""
    if len(args) != 2 or not all(a.isascii() and a.isdigit() for a in args):
        raise ValueError(f"usage: flashpods-rsync-watch LIMIT_BYTES MAX_ENTRIES, not {args}")
    return int(args[0]), int(args[1])


def _more_descriptors() -> None:
    """The entry walk holds one listing (two descriptors) per level of the tree: the
    soft limit goes up to the hard one (root may; rsync's deepest path is 4096 bytes)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> int:
    """`flashpods-rsync-watch LIMIT ENTRIES` as rsync's pre-xfer exec: measure the
    upload as the transfer finds it, fork the watcher and exit 0 (rsync waits for this
    exit before the transfer runs); exit 1, which refuses the transfer, if it cannot
    watch."""
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="flashpods-rsync-watch: %(message)s")
    transfer = parse_transfer(os.environ)
    if not transfer.receiving:
        return 0
    try:
        limit, max_entries = parse_limits(args)
    except ValueError as exc:
        print(f"upload watch could not start: {exc}")  # rsync shows it to the client
        return 1
    _more_descriptors()
    try:
        root_fd = os.pidfd_open(transfer.pid)
        state = Watch(transfer, limit, max_entries, root_fd)
        child = os.fork()
    except OSError as exc:
        print(f"upload watch could not start: {exc}")  # rsync shows it to the client
        return 1
    if child:
        return 0
    try:
        _detach({root_fd} | ({state.upload_fd} if state.upload_fd is not None else set()))
        watch(state)
    finally:
        os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
