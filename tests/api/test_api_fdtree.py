"""Removing trees someone else built: any depth, no symlink followed, bounded descriptors."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from flashpods.common import fdtree


def chain(root: Path, depth: int) -> None:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for i in range(depth):
        os.mkdir("d", dir_fd=fd)
        if i % 3 == 0:
            os.close(os.open(f"f{i}", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd))
        child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.close(fd)


def test_a_tree_deeper_than_the_recursion_limit_is_removed(tmp_path: Path) -> None:
    root = tmp_path / "deep"
    root.mkdir()
    chain(root, sys.getrecursionlimit() + 500)
    before = len(os.listdir("/proc/self/fd"))
    fdtree.remove_path(root)
    assert not root.exists()
    assert len(os.listdir("/proc/self/fd")) == before


def test_removal_never_follows_a_link(tmp_path: Path) -> None:
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "precious").write_text("x")
    root = tmp_path / "tree"
    (root / "a" / "b").mkdir(parents=True)
    os.symlink(keep, root / "a" / "b" / "to_dir")
    os.symlink(keep / "precious", root / "a" / "to_file")
    os.symlink("/", root / "slash")
    (root / "a" / "b").chmod(0o500)  # ours but not writable: opened up on the way
    fdtree.remove_path(root)
    assert not root.exists() and (keep / "precious").read_text() == "x"
    fdtree.remove_path(root)  # gone already: fine
