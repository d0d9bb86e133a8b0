"""The rsync watcher's parts (flashpods.rsyncwatch): which transfers it watches, when an
upload is over its byte or entry limit, how the entry walk counts in slices, and that
it reads and writes the client's tree without following a symlink."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from flashpods import rsyncwatch
from flashpods.api.uploads import tree_stats
from flashpods.client.upload import CUT_MARKER
from flashpods.common.uploadlimits import Cut, parse_cut
from flashpods.rsyncwatch import (
    MARKER,
    Budget,
    EntryWalk,
    Transfer,
    Watch,
    parse_limits,
    parse_transfer,
    tree_bytes,
    write_marker,
)

PUSH = {
    "RSYNC_PID": "4242",
    "RSYNC_MODULE_PATH": "/tmp/flashpods/uploads",
    "RSYNC_REQUEST": "uploads/upload_abc/",
    "RSYNC_ARG0": "rsyncd",
    "RSYNC_ARG1": "--server",
    "RSYNC_ARG2": "-logDtpre.iLsfxCIvu",
    "RSYNC_ARG3": ".",
    "RSYNC_ARG4": "/upload_abc/",
}


def test_a_push_into_an_upload_is_watched() -> None:
    transfer = parse_transfer(PUSH)
    assert (transfer.pid, transfer.module_path) == (4242, "/tmp/flashpods/uploads")
    assert (transfer.upload_id, transfer.receiving) == ("upload_abc", True)


def test_a_pull_writes_nothing_and_is_not_watched() -> None:
    pull = {**PUSH, "RSYNC_ARG1": "--server", "RSYNC_ARG2": "--sender", "RSYNC_ARG3": "-le.Lsfxc"}
    pull["RSYNC_ARG4"], pull["RSYNC_ARG5"] = ".", f"/upload_abc/{MARKER}"
    assert parse_transfer(pull).receiving is False
    # A path argument named --sender (after ".") is a file, not the option.
    tricky = {**PUSH, "RSYNC_ARG4": "--sender"}
    assert parse_transfer(tricky).receiving is True


@pytest.mark.parametrize(
    "request_", ["uploads/", "uploads/not-an-upload/", "uploads/upload_a/ uploads/upload_b/", ""]
)
def test_a_request_naming_no_single_upload_is_still_bounded(request_: str) -> None:
    transfer = parse_transfer({**PUSH, "RSYNC_REQUEST": request_})
    assert (transfer.upload_id, transfer.receiving) == (None, True)


def test_the_budget_is_the_starting_size_plus_what_the_transfer_wrote() -> None:
    budget = Budget(limit=1000, baseline=300, written_then=50)
    assert budget.estimate(750) == 1000
    assert not budget.over(750)  # exactly at the limit is allowed (finalize's rule)
    assert budget.over(751)
    # Measured again (a rewrite replaced bytes): the count starts over from the tree.
    again = budget.remeasured(size=400, written=900)
    assert (again.estimate(900), again.over(1500), again.over(1501)) == (400, False, True)


def test_tree_bytes_counts_files_and_links_but_never_follows_them(tmp_path: Path) -> None:
    upload = tmp_path / "upload"
    (upload / "a" / "b").mkdir(parents=True)
    (upload / "one").write_bytes(b"x" * 100)
    (upload / "a" / "b" / "two").write_bytes(b"y" * 50)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "big").write_bytes(b"z" * 10_000)
    (upload / "a" / "link").symlink_to(outside)  # a directory symlink: not entered
    fd = os.open(upload, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert tree_bytes(fd) == 150 + len(str(outside))
    finally:
        os.close(fd)


def test_the_marker_replaces_a_planted_symlink_and_never_writes_through_it(
    tmp_path: Path,
) -> None:
    upload = tmp_path / "upload"
    upload.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (upload / MARKER).symlink_to(victim)
    fd = os.open(upload, os.O_RDONLY | os.O_DIRECTORY)
    try:
        write_marker(fd, Cut("bytes", 1000, 1234))
    finally:
        os.close(fd)
    assert victim.read_text() == "keep"
    assert not (upload / MARKER).is_symlink()
    assert json.loads((upload / MARKER).read_text()) == {
        "limit_bytes": 1000,
        "measured_bytes": 1234,
    }


def test_the_client_reads_the_marker_the_host_writes() -> None:
    assert CUT_MARKER == MARKER


def test_the_watcher_needs_both_limits() -> None:
    assert parse_limits(["2147483648", "500000"]) == (2147483648, 500000)
    for bad in ([], ["2147483648"], ["1", "2", "3"], ["1", "-2"], ["1", "²"]):
        with pytest.raises(ValueError):
            parse_limits(bad)


def test_cut_markers_say_which_limit() -> None:
    for cut in (Cut("bytes", 10, 11), Cut("entries", 5, 9)):
        assert parse_cut(json.loads(json.dumps(cut.marker()))) == cut
    assert Cut("entries", 5, 9).marker() == {"limit_entries": 5, "measured_entries": 9}
    assert parse_cut({"limit_bytes": "x", "measured_bytes": 1}) is None
    assert parse_cut(None) is None and parse_cut([1]) is None


def build_tree(root: Path, dirs: int, files_per_dir: int) -> int:
    """Directories each holding files, plus one symlink to outside: its entry count."""
    root.mkdir()
    for d in range(dirs):
        (root / f"d{d}" / "sub").mkdir(parents=True)
        for f in range(files_per_dir):
            (root / f"d{d}" / "sub" / f"f{f}").write_bytes(b"")
    (root / "link").symlink_to("/")
    return dirs * (2 + files_per_dir) + 1


def opened(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY)


def test_the_entry_walk_counts_what_finalize_counts_and_never_follows_links(
    tmp_path: Path,
) -> None:
    expected = build_tree(tmp_path / "up", dirs=7, files_per_dir=3)
    fd = opened(tmp_path / "up")
    walk = EntryWalk(fd)
    try:
        assert walk.step(60.0) is True
        assert walk.count == expected == tree_stats(tmp_path / "up").entry_count
        (tmp_path / "up" / "more").mkdir()
        assert walk.step(60.0) is True and walk.count == expected + 1  # a new walk
        assert walk.walks == 2
    finally:
        walk.close()
        os.close(fd)


class TickingClock:
    """Each reading one second later: every slice ends at its first look at the clock."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def test_the_entry_walk_resumes_where_its_slice_ended(tmp_path: Path) -> None:
    expected = build_tree(tmp_path / "up", dirs=50, files_per_dir=10)  # 601 entries
    fd = opened(tmp_path / "up")
    before = len(os.listdir("/proc/self/fd"))
    walk = EntryWalk(fd, clock=TickingClock())
    try:
        counts = []
        while not walk.step(0.5):
            counts.append(walk.count)
        # 64 entries a slice (the clock is read every 64), each slice going on from the last.
        assert counts == [64 * n for n in range(1, len(counts) + 1)]
        assert walk.count == expected and len(counts) == expected // 64
        assert walk.busy > 0
    finally:
        walk.close()
    assert len(os.listdir("/proc/self/fd")) == before  # every listing closed
    os.close(fd)


def test_the_entry_walk_skips_what_vanishes_while_it_walks(tmp_path: Path) -> None:
    build_tree(tmp_path / "up", dirs=3, files_per_dir=200)
    fd = opened(tmp_path / "up")
    walk = EntryWalk(fd, clock=TickingClock())
    try:
        assert walk.step(0.5) is False  # inside some directory's listing
        for d in range(3):
            for f in (tmp_path / "up" / f"d{d}" / "sub").iterdir():
                f.unlink()
            (tmp_path / "up" / f"d{d}" / "sub").rmdir()
        while not walk.step(0.5):
            pass
        assert walk.count <= 3 * 202 + 1
        assert walk.step(60.0) and walk.count == 4  # d0-d2 and the link
    finally:
        walk.close()
        os.close(fd)


@pytest.fixture
def this_process() -> Iterator[int]:
    fd = os.pidfd_open(os.getpid())
    yield fd
    os.close(fd)


def watch_of(module: Path, upload_id: str | None, max_entries: int, pidfd: int) -> Watch:
    transfer = Transfer(os.getpid(), str(module), upload_id, receiving=True)
    return Watch(transfer, limit=1 << 40, max_entries=max_entries, root_fd=pidfd)


def test_the_watch_cuts_once_the_running_count_passes_the_entry_limit(
    tmp_path: Path, this_process: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = tmp_path / "uploads"
    module.mkdir()
    build_tree(module / "upload_x", dirs=100, files_per_dir=8)  # 1001 entries
    monkeypatch.setattr(rsyncwatch, "WALK_SLICE", 0.0)  # one clock look, 64 entries
    state = watch_of(module, "upload_x", 100, this_process)
    assert state.check() is None  # 64
    cut = state.check()  # 128: over 100 before the walk has seen the whole tree
    assert cut == Cut("entries", 100, 128)
    assert state.walk is not None and state.walk.walks == 0


def test_the_watch_lets_an_upload_at_the_entry_limit_go_on(
    tmp_path: Path, this_process: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = tmp_path / "uploads"
    module.mkdir()
    limit = build_tree(module / "upload_x", dirs=20, files_per_dir=3)
    monkeypatch.setattr(rsyncwatch, "WALK_SLICE", 60.0)
    state = watch_of(module, "upload_x", limit, this_process)
    assert state.check() is None and state.check() is None
    (module / "upload_x" / "one-more").write_bytes(b"")
    assert state.check() == Cut("entries", limit, limit + 1)


def test_the_watch_waits_for_rsync_to_create_the_upload_and_bounds_a_push_to_no_upload(
    tmp_path: Path, this_process: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = tmp_path / "uploads"
    module.mkdir()
    monkeypatch.setattr(rsyncwatch, "WALK_SLICE", 60.0)
    later = watch_of(module, "upload_late", 5, this_process)
    assert later.check() is None and later.walk is None  # no directory yet
    build_tree(module / "upload_late", dirs=2, files_per_dir=1)  # 7 entries
    assert later.check() == Cut("entries", 5, 7)
    # A push naming no single upload: the whole module counts (an upper bound).
    anywhere = watch_of(module, None, 7, this_process)
    assert anywhere.check() == Cut("entries", 7, 8)
