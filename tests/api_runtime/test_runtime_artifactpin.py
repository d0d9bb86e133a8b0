"""Pin holders are found by their job's id and released through a pidfd, never by a
guess: another job's holder and a process of someone else stay."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from flashpods.api.runtime import artifactpin
from flashpods.common.polling import wait_until

NOBODY_UID = 65534


def holder(tmp_path: Path, job_id: str, uid: int | None = None) -> subprocess.Popen[bytes]:
    """A holder-like process, returned once its environment shows the pin: Popen returns
    when exec closes its pipe, a moment before the kernel has set up the new environment
    (/proc/<pid>/environ is empty in between)."""
    proc = subprocess.Popen(
        ["sleep", "120"],
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"], artifactpin.PIN_ENV: job_id},
        user=uid,
    )
    entry = f"{artifactpin.PIN_ENV}={job_id}".encode()
    environ = Path(f"/proc/{proc.pid}/environ")
    wait_until(lambda: entry in environ.read_bytes().split(b"\0"), 10, "holder's exec")
    return proc


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait()


def test_release_kills_exactly_the_jobs_holders(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    mine, other, foreign = (
        holder(tmp_path, "job_a"),
        holder(tmp_path, "job_b"),
        holder(tmp_path, "job_a", uid=NOBODY_UID),  # same job id, another user's process
    )
    procs += [mine, other, foreign]
    assert artifactpin.holders("job_a") == [mine.pid]
    every = artifactpin.holders(None)  # other sessions' holders may be there too
    assert mine.pid in every and other.pid in every and foreign.pid not in every
    assert artifactpin.holders("job_a", NOBODY_UID) == [foreign.pid]
    artifactpin.release("job_a")
    assert mine.wait(10) == -9
    assert other.poll() is None and foreign.poll() is None
    assert artifactpin.holders("job_a") == []


def test_open_pinned_reaches_the_holders_directory_and_fails_without_one(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    (tmp_path / "left.txt").write_text("x")
    procs.append(holder(tmp_path, "job_c"))
    pinned = artifactpin.open_pinned("job_c")
    readable = os.open(".", os.O_RDONLY | os.O_DIRECTORY, dir_fd=pinned)
    try:
        assert os.listdir(readable) == ["left.txt"]
    finally:
        os.close(readable)
        os.close(pinned)
    with pytest.raises(artifactpin.PinError) as raised:
        artifactpin.open_pinned("job_none")
    assert raised.value.errno == 2  # ENOENT: the collector's artifact_copy_container_gone


def test_open_pinned_takes_a_known_holder_only_if_it_is_the_jobs(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    for place in (mine, theirs):
        place.mkdir()
        (place / f"{place.name}.txt").write_text("x")
    procs += [holder(mine, "job_d"), holder(theirs, "job_e")]

    def listed(pinned: int) -> list[str]:
        readable = os.open(".", os.O_RDONLY | os.O_DIRECTORY, dir_fd=pinned)
        try:
            return os.listdir(readable)
        finally:
            os.close(readable)
            os.close(pinned)

    assert listed(artifactpin.open_pinned("job_d", procs[0].pid)) == ["mine.txt"]
    # Another job's holder named as this job's: not taken; the job's own is found.
    assert listed(artifactpin.open_pinned("job_d", procs[1].pid)) == ["mine.txt"]
    with pytest.raises(artifactpin.PinError):
        artifactpin.open_pinned("job_f", procs[1].pid)


def test_pin_returns_once_its_holder_is_found_and_kills_one_that_never_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A directory stands in for the container's /artifacts tmpfs (same size check).
    fs = os.statvfs(tmp_path)
    size = fs.f_blocks * fs.f_frsize
    opened = os.O_RDONLY | os.O_DIRECTORY

    monkeypatch.setattr(
        artifactpin, "_open_through", lambda pid, timeout: os.open(tmp_path, opened)
    )
    holder = artifactpin.pin(1, "job_f", size, 60, 5)
    try:
        assert artifactpin.holders("job_f") == [holder]  # findable the moment pin returns
        assert os.readlink(f"/proc/{holder}/cwd") == str(tmp_path)
    finally:
        artifactpin.release("job_f")

    found = artifactpin._holds
    monkeypatch.setattr(artifactpin, "_holds", lambda pid, job_id, uid: False)
    with pytest.raises(artifactpin.PinError, match="did not start"):
        artifactpin.pin(1, "job_g", size, 60, 0.05)
    monkeypatch.setattr(artifactpin, "_holds", found)
    wait_until(lambda: artifactpin.holders("job_g") == [], 10, "the unfound holder's end")


def test_release_kills_the_holder_without_pidfd_open(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_pidfd(pid: int) -> int:
        raise OSError(errno.ENOSYS, "pidfd_open not here")

    mine, other = holder(tmp_path, "job_h"), holder(tmp_path, "job_i")
    procs += [mine, other]
    monkeypatch.setattr(artifactpin.os, "pidfd_open", no_pidfd)
    artifactpin.release("job_h")
    monkeypatch.undo()  # Popen.wait may use pidfd_open itself
    assert mine.wait(10) == -9
    assert other.poll() is None
