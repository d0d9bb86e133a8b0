"""Folder trees for upload tests and benchmarks: build one of a given shape, and take a
record of everything about one (to show that nothing in it changed)."""

from __future__ import annotations

import hashlib
import os
import random
import stat
import threading
from pathlib import Path

# Per entry (by path relative to the root): inode, mode, uid, gid, size, links, atime,
# mtime and ctime in ns, and a hash of the content (regular files) or target (links).
Record = dict[str, tuple[int | str, ...]]


def tree_record(root: Path, *, atimes: bool = True) -> Record:
    """lstat of every entry under root, contents read with O_NOATIME. A link's atime is
    never recorded (reading its target touches it); `atimes=False` leaves out every
    atime (a reader such as a job's start check may touch a directory's)."""
    out: Record = {}
    for directory, dirs, files in os.walk(root):
        for name in [".", *dirs, *files]:
            path = Path(directory, name)
            info = path.lstat()
            digest = hashlib.sha256()
            atime = info.st_atime_ns if atimes else 0
            if stat.S_ISREG(info.st_mode):
                fd = os.open(path, os.O_RDONLY | os.O_NOATIME)
                with os.fdopen(fd, "rb") as file:
                    while chunk := file.read(1 << 20):
                        digest.update(chunk)
            elif stat.S_ISLNK(info.st_mode):
                digest.update(os.fsencode(os.readlink(path)))
                atime = 0
            out[str(path.relative_to(root))] = (
                info.st_ino,
                info.st_mode,
                info.st_uid,
                info.st_gid,
                info.st_size,
                info.st_nlink,
                atime,
                info.st_mtime_ns,
                info.st_ctime_ns,
                digest.hexdigest(),
            )
    return out


def write_tree(root: Path, files: int, total_bytes: int, *, per_dir: int = 20) -> list[Path]:
    """`files` files of random bytes (incompressible, so rsync cannot shrink them) adding
    up to `total_bytes`, `per_dir` to a directory, two levels deep like a source tree.
    Returns the files' paths."""
    rng = random.Random(files * 7919 + total_bytes)
    size, extra = divmod(total_bytes, files)
    paths = []
    for n in range(files):
        directory = root / f"pkg{n // (per_dir * 10):03d}" / f"mod{n // per_dir:04d}"
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"file{n:05d}.dat"
        path.write_bytes(rng.randbytes(size + (1 if n < extra else 0)))
        paths.append(path)
    return paths


def tree_size(root: Path) -> int:
    """Bytes of the non-directory entries under root, by lstat, as finalize counts them;
    entries that vanish while rsync writes (its temporary files) are skipped."""
    size = 0
    for directory, _, files in os.walk(root):
        for name in files:
            try:
                info = os.lstat(os.path.join(directory, name))
            except FileNotFoundError:
                continue
            size += info.st_size
    return size


class LargestSize:
    """The largest tree_size of a directory seen while something writes it, sampled
    every `every` seconds in a thread, from `with` to its end."""

    def __init__(self, root: Path, every: float = 0.005) -> None:
        self.root = root
        self.every = every
        self.largest = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.largest = max(self.largest, tree_size(self.root))
            self.samples += 1

    def __enter__(self) -> LargestSize:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def tree_entries(root: Path) -> int:
    """Entries under root (files, directories, links), as finalize counts them."""
    return sum(len(dirs) + len(files) for _, dirs, files in os.walk(root))


class LargestCount(LargestSize):
    """The largest tree_entries of a directory seen while something writes it."""

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.largest = max(self.largest, tree_entries(self.root))
            self.samples += 1
