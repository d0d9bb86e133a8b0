"""A snapshot's private copy (api/treecopy.py): what rsync's quick check needs kept, no
inode shared, nothing followed, bounded descriptors, the source untouched."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest
from flashpods.api import treecopy
from flashpods.api.treecopy import MAX_DEPTH, copy_tree
from flashpods_testing.trees import tree_record


def build(root: Path) -> None:
    (root / "src" / "deep").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "src" / "main.py").write_bytes(b"print(1)\n" * 1000)
    (root / "src" / "deep" / "data.bin").write_bytes(os.urandom(70_000))
    (root / "zero").write_bytes(b"")
    (root / "script.sh").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "script.sh", 0o750)
    (root / "readonly.txt").write_bytes(b"r")
    os.chmod(root / "readonly.txt", 0o400)
    os.link(root / "zero", root / "hardlink")
    os.symlink("/", root / "to_root")
    os.symlink("src/main.py", root / "relative")
    os.symlink("missing", root / "dangling")
    os.mkfifo(root / "fifo")
    os.chmod(root / "src" / "deep", 0o500)  # read-only directory
    os.utime(root / "src" / "main.py", ns=(1_000_000_001, 1_600_000_000_123_456_789))
    os.utime(root / "dangling", ns=(5, 1_500_000_000_000_000_007), follow_symlinks=False)


def test_a_copy_keeps_what_rsync_compares_and_shares_no_inode(tmp_path: Path) -> None:
    source = tmp_path / "snapshot"
    source.mkdir()
    build(source)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(source / "sock"))
    before = tree_record(source)
    fds = len(os.listdir("/proc/self/fd"))

    result = copy_tree(source, tmp_path / "copy")

    assert tree_record(source) == before  # atime and ctime included
    assert len(os.listdir("/proc/self/fd")) == fds
    # Symlinks, the FIFO and the socket are left to rsync (a link's target is in its file
    # list anyway).
    assert (result.files, result.skipped) == (6, 5)
    copy = tmp_path / "copy"
    left_out = {"fifo", "sock", "to_root", "relative", "dangling"}
    assert not any(os.path.lexists(copy / name) for name in left_out)
    mine = tree_record(copy)
    for rel, (ino, mode, _, _, size, _, _, mtime, _, content) in before.items():
        if rel in left_out:
            continue
        c_ino, c_mode, _, _, c_size, _, _, c_mtime, _, c_content = mine[rel]
        assert c_ino != ino, rel
        assert (c_size, c_content, c_mtime) == (size, content, mtime), rel
        # A directory stays writable to us: rsync may add to it, and sets the mode it wants.
        assert c_mode == (mode | stat.S_IRWXU if stat.S_ISDIR(mode) else mode), rel
    assert mine["hardlink"][5] == 1  # two names of one file become two files


def test_writing_to_the_copy_never_reaches_the_source(tmp_path: Path) -> None:
    """What rsync does to a file it finds in place: chmod, utime, rewrite, append."""
    source = tmp_path / "snapshot"
    source.mkdir()
    build(source)
    before = tree_record(source)
    copy = tmp_path / "copy"
    copy_tree(source, copy)
    os.chmod(copy / "src" / "main.py", 0o600)
    os.utime(copy / "src" / "main.py", ns=(1, 2))
    with open(copy / "src" / "main.py", "r+b") as out:
        out.write(b"changed")
    with open(copy / "hardlink", "ab") as out:
        out.write(b"more")
    os.chmod(copy / "src" / "deep", 0o700)
    (copy / "src" / "deep" / "data.bin").unlink()
    assert tree_record(source) == before


def test_deep_directories_are_left_to_rsync_and_descriptors_stay_bounded(tmp_path: Path) -> None:
    source = tmp_path / "snapshot"
    path = source
    for _ in range(MAX_DEPTH + 10):
        path = path / "d"
    path.mkdir(parents=True)
    (path / "f").write_text("deep")
    fds = len(os.listdir("/proc/self/fd"))
    result = copy_tree(source, tmp_path / "copy")
    assert result.skipped == 1 and result.files == 0
    depth = sum(1 for _ in (tmp_path / "copy").rglob("d"))
    assert depth == MAX_DEPTH - 1
    assert len(os.listdir("/proc/self/fd")) == fds


def test_a_full_disk_stops_the_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "snapshot"
    source.mkdir()
    build(source)

    def full(*args: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(treecopy.os, "copy_file_range", full)
    fds = len(os.listdir("/proc/self/fd"))
    with pytest.raises(OSError) as err:
        copy_tree(source, tmp_path / "copy")
    assert err.value.errno == 28
    assert len(os.listdir("/proc/self/fd")) == fds


def test_sendfile_where_copy_file_range_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "snapshot"
    source.mkdir()
    build(source)

    def cross_device(*args: object) -> int:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(treecopy.os, "copy_file_range", cross_device)
    copy_tree(source, tmp_path / "copy")
    data = source / "src" / "deep" / "data.bin"
    assert (tmp_path / "copy" / "src" / "deep" / "data.bin").read_bytes() == data.read_bytes()
