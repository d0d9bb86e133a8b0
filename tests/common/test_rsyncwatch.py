"""The rsync watcher's pure parts (flashpods.rsyncwatch): which transfers it watches,
when an upload is over its limit, and that it reads and writes the client's tree
without following a symlink."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from flashpods.client.upload import CUT_MARKER
from flashpods.rsyncwatch import MARKER, Budget, parse_transfer, tree_bytes, write_marker

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
        write_marker(fd, 1000, 1234)
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
