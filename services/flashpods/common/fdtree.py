"""Directory trees that someone else controls, handled by file descriptor.

Every call here works on one name relative to an open directory (`dir_fd=`) and never
follows a symlink (`O_NOFOLLOW`, `fstatat` without following), so a tree planted by a
job or an rsync client cannot lead outside itself, however it swaps entries. Nothing
recurses: depth is limited only by the filesystem, and the number of open descriptors
and the memory used are bounded whatever the shape of the tree.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
from collections.abc import Iterator
from pathlib import Path

_PATH = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Entries read per directory scan while removing (the memory bound of remove_entry).
REMOVE_BATCH = 1024
_SCRATCH_PREFIX = " fp-rm-"  # a leading space: never a name worth keeping


def chmod_entry(name: str, dir_fd: int, mode: int) -> os.stat_result:
    """Set the mode of the directory or regular file `name` (never a symlink's target).

    Python 3.11 cannot `fchmodat(AT_SYMLINK_NOFOLLOW)`, and `fchmod` refuses an `O_PATH`
    descriptor, so the mode is set through /proc/self/fd, which names exactly the inode
    the descriptor was opened on. Returns the entry's stat from before the change."""
    fd = os.open(name, _PATH, dir_fd=dir_fd)
    try:
        info = os.fstat(fd)
        if not (stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode)):
            raise OSError(errno.EINVAL, "not a directory or regular file", name)
        if stat.S_IMODE(info.st_mode) != mode:
            os.chmod(f"/proc/self/fd/{fd}", mode)
        return info
    finally:
        os.close(fd)


def open_dir(name: str, dir_fd: int | None, mode: int | None = None) -> int:
    """A readable descriptor for the directory `name` (relative to `dir_fd`, or a path
    when dir_fd is None). A directory we own that is not open to us (`chmod 000`) is
    opened up to `mode` (default: the owner's rwx added); one owned by someone else
    raises PermissionError. A symlink raises OSError (ELOOP or ENOTDIR)."""
    path_fd = os.open(name, _PATH | os.O_DIRECTORY, dir_fd=dir_fd)
    try:
        return open_up(path_fd, mode)
    finally:
        os.close(path_fd)


def open_up(path_fd: int, mode: int | None = None) -> int:
    """open_dir for a directory already held by an (O_PATH) descriptor."""
    info = os.fstat(path_fd)
    wanted = stat.S_IMODE(info.st_mode) | stat.S_IRWXU if mode is None else mode
    if info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) != wanted:
        os.chmod(f"/proc/self/fd/{path_fd}", wanted)
    return os.open(".", _DIR, dir_fd=path_fd)


def _unlink_or_rmdir(name: str, dir_fd: int) -> bool:
    """Remove a non-directory or an empty directory; False if it is a non-empty directory."""
    try:
        os.unlink(name, dir_fd=dir_fd)
        return True
    except FileNotFoundError:
        return True
    except IsADirectoryError:
        pass
    except PermissionError as exc:  # unlink() of a directory without CAP_DAC... says EPERM
        if exc.errno != errno.EPERM:
            raise
    try:
        os.rmdir(name, dir_fd=dir_fd)
        return True
    except FileNotFoundError:
        return True
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            return False
        raise


def _batch(fd: int) -> list[str]:
    with os.scandir(fd) as entries:  # closing rewinds the shared offset for the next scan
        return [entry.name for entry in itertools.islice(entries, REMOVE_BATCH)]


def remove_entry(name: str, dir_fd: int) -> None:
    """Remove `name` in `dir_fd`: a file, a symlink (not its target) or a whole tree.

    A tree is flattened rather than walked: in the directory being emptied (`top`), each
    non-empty subdirectory gives up its own subdirectories to `top` (a rename within the
    filesystem) and has its other entries unlinked, then goes itself. Two descriptors and
    one batch of names at a time, for any depth."""
    if _unlink_or_rmdir(name, dir_fd):
        return
    scratch = (f"{_SCRATCH_PREFIX}{n}" for n in itertools.count())
    top = open_dir(name, dir_fd)
    try:
        while names := _batch(top):
            for child in names:
                if not _unlink_or_rmdir(child, top):
                    _hoist_children(child, top, scratch)
    finally:
        os.close(top)
    os.rmdir(name, dir_fd=dir_fd)


def _hoist_children(child: str, top: int, scratch: Iterator[str]) -> None:
    sub = open_dir(child, top)
    try:
        while names := _batch(sub):
            for grandchild in names:
                if _unlink_or_rmdir(grandchild, sub):
                    continue
                # Moving a directory rewrites its `..`: it must be writable to us.
                os.close(open_dir(grandchild, sub))
                while True:
                    target = next(scratch)
                    try:
                        os.rename(grandchild, target, src_dir_fd=sub, dst_dir_fd=top)
                        break
                    except OSError as exc:
                        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                            raise
    finally:
        os.close(sub)
    os.rmdir(child, dir_fd=top)


def remove_path(path: Path) -> None:
    """Remove whatever is at `path` (the last component is not followed); gone is fine."""
    try:
        parent = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        remove_entry(path.name, parent)
    finally:
        os.close(parent)
