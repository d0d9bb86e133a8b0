"""A private copy of a snapshot: the starting point of a delta re-upload.

rsync's quick check skips a file whose size and mtime already match, so a new upload
that starts as a copy of the folder's last snapshot receives only what changed. The copy
shares no inode with its source: every regular file is a new inode filled by
copy_file_range (a reflink on btrfs and XFS, an in-kernel copy elsewhere), so whatever
later happens to the copy (rsync's chmod and utime in place, its renames, deletes) can
never reach the snapshot. Hard links would share the inode with the snapshot.

Walked by file descriptor, as in flashpods.common.fdtree: one name at a time relative to
an open directory, never following a symlink, no recursion; the source is read with
O_NOATIME, so not even its access times change. Only directories and regular files are
copied: a symlink's target travels in rsync's file list whether or not the host has the
link (and reading it would touch its atime), and FIFOs, sockets, devices, unreadable
entries and directories deeper than MAX_DEPTH are left out too. The copy is only a head
start: rsync sends whatever it lacks. Sizes, modes and modification times are kept.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# Two descriptors per level are open while a level is copied: this bounds them.
MAX_DEPTH = 64
# The disk is full or a file is over a limit: the copy cannot go on (rsync could not either).
FATAL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_CHUNK = 1 << 30


@dataclass
class CopyResult:
    files: int = 0  # regular files copied
    bytes: int = 0
    skipped: int = 0  # entries left out (rsync sends them)


@dataclass
class _Level:
    src: int
    dst: int
    names: list[str]
    info: os.stat_result  # the source directory's, applied to dst once it is full


def copy_tree(source: Path, target: Path) -> CopyResult:
    """Copy the directory `source` to the new directory `target` (its parent must exist).
    Raises OSError only when nothing more can be written (FATAL_ERRNOS) or when `source`
    itself cannot be opened; `target` is then left for the caller to remove."""
    result = CopyResult()
    src = _open_source(str(source), _DIR, None)
    try:
        info = os.fstat(src)
        os.mkdir(target, 0o700)
        dst = os.open(target, _DIR)
    except BaseException:
        os.close(src)
        raise
    stack = [_Level(src, dst, os.listdir(src), info)]
    try:
        while stack:
            level = stack[-1]
            if not level.names:
                stack.pop()
                _finish_dir(level)
                continue
            name = level.names.pop()
            try:
                child = _copy_entry(name, level, len(stack), result)
            except OSError as exc:
                if exc.errno in FATAL_ERRNOS:
                    raise
                result.skipped += 1
                continue
            if child is not None:
                stack.append(child)
    finally:
        for level in stack:
            os.close(level.src)
            os.close(level.dst)
    return result


def _copy_entry(name: str, parent: _Level, depth: int, result: CopyResult) -> _Level | None:
    """Copy one entry; a directory is created and returned, to be filled next."""
    info = os.stat(name, dir_fd=parent.src, follow_symlinks=False)
    if stat.S_ISREG(info.st_mode):
        _copy_file(name, parent, info)
        result.files += 1
        result.bytes += info.st_size
    elif stat.S_ISDIR(info.st_mode) and depth < MAX_DEPTH:
        return _open_dir(name, parent)
    else:
        result.skipped += 1
    return None


def _open_source(name: str, flags: int, dir_fd: int | None) -> int:
    """Opened without touching its access time where we may (we own it, or are root)."""
    try:
        return os.open(name, flags | os.O_NOATIME, dir_fd=dir_fd)
    except PermissionError:
        return os.open(name, flags, dir_fd=dir_fd)


def _open_dir(name: str, parent: _Level) -> _Level:
    src = _open_source(name, _DIR, parent.src)
    try:
        info = os.fstat(src)
        names = os.listdir(src)
        os.mkdir(name, 0o700, dir_fd=parent.dst)
        dst = os.open(name, _DIR, dir_fd=parent.dst)
    except BaseException:
        os.close(src)
        raise
    return _Level(src, dst, names, info)


def _copy_file(name: str, parent: _Level, info: os.stat_result) -> None:
    src = _open_source(name, _READ, parent.src)
    try:
        opened = os.fstat(src)
        if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
            raise OSError(errno.ESTALE, "changed while being copied", name)
        dst = os.open(name, _CREATE, 0o600, dir_fd=parent.dst)
        try:
            _copy_data(src, dst, opened.st_size)
            os.fchmod(dst, stat.S_IMODE(opened.st_mode))
            os.utime(dst, ns=(opened.st_atime_ns, opened.st_mtime_ns))
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _copy_data(src: int, dst: int, size: int) -> None:
    """copy_file_range until the end; sendfile where the kernel cannot (another
    filesystem type, an old kernel)."""
    done = 0
    try:
        while done < size and (n := os.copy_file_range(src, dst, min(_CHUNK, size - done))):
            done += n
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
            raise
    while done < size and (n := os.sendfile(dst, src, done, min(_CHUNK, size - done))):
        done += n


def _finish_dir(level: _Level) -> None:
    """The directory is full: its own mode and times now (adding entries changed its
    mtime). It stays writable to us: rsync may add to it, and it sets the mode it wants
    when it differs."""
    try:
        os.fchmod(level.dst, stat.S_IMODE(level.info.st_mode) | stat.S_IRWXU)
        os.utime(level.dst, ns=(level.info.st_atime_ns, level.info.st_mtime_ns))
    finally:
        os.close(level.src)
        os.close(level.dst)
