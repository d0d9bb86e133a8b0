"""The per-upload limit holds while rsync writes (issue #11 W6): many files, each far under
the limit, are cut by the daemon's pre-xfer watcher (flashpods.rsyncwatch) once the
upload passes the limit; the upload's directory, sampled while rsync runs, never grows
past the limit plus the documented overshoot; the client says `upload_too_large`; an
upload under the limit, and a re-upload over a base that rewrites every file, go through.
The entry limit holds the same way: a flood of empty directories is cut near it."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from client_stack import Api, flashpods_api, rsync_daemon
from flashpods.client.errors import FlashpodsError
from flashpods.client.upload import CUT_MARKER, run_rsync
from flashpods.common.polling import wait_until
from flashpods_testing.localhost import HostError
from flashpods_testing.trees import LargestCount, LargestSize, tree_entries, tree_size

LIMIT = 8 << 20
# What rsync writes in one 100 ms poll plus one measurement (docs/trust.md W6), with room
# for a loaded machine: loopback rsync here writes ~50-100 MB/s.
OVERSHOOT = 16 << 20
FILE = 64 << 10


@pytest.fixture
def limited_host(tmp_path: Path, podman_socket: Path) -> Iterator[tuple[Api, str]]:
    (tmp_path / "rsyncd").mkdir()
    try:
        with (
            flashpods_api(
                tmp_path / "api", podman_socket, "limit", FLASHPODS_UPLOAD_MAX_BYTES=str(LIMIT)
            ) as api,
            rsync_daemon(tmp_path / "rsyncd", api.uploads, upload_max_bytes=LIMIT) as url,
        ):
            yield api, url
    except (HostError, TimeoutError) as exc:
        pytest.fail(str(exc), pytrace=False)


def small_files(folder: Path, total: int, fill: int = 0x5A, mtime: int | None = None) -> None:
    folder.mkdir(exist_ok=True)
    for n in range(total // FILE):
        path = folder / f"part{n:05d}.bin"
        path.write_bytes(bytes([fill]) * FILE)
        if mtime is not None:  # rsync's quick check compares whole seconds
            os.utime(path, (mtime, mtime))


def watchers(limit: int = LIMIT) -> list[int]:
    """The rsync watchers of this test's daemon (their limit is the test's)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"flashpods.rsyncwatch" in argv and str(limit).encode() in argv:
            found.append(int(pid))
    return found


def test_many_small_files_are_cut_at_the_upload_limit_while_rsync_writes(
    limited_host: tuple[Api, str], tmp_path: Path
) -> None:
    api, rsync_url = limited_host
    project = tmp_path / "project"
    small_files(project, 8 * LIMIT)  # 64 MiB in 1024 files of 64 KiB
    client = api.client(rsync_url)
    client.create_upload("upload_toolarge")
    with (
        LargestSize(api.uploads / "upload_toolarge") as sampler,
        pytest.raises(FlashpodsError) as err,
    ):
        run_rsync(project, rsync_url, "upload_toolarge")
    print(f"largest sampled: {sampler.largest} bytes ({sampler.samples} samples), limit {LIMIT}")
    assert (err.value.code, err.value.status) == ("upload_too_large", None)
    cut = err.value.details["cut"]
    assert cut["limit_bytes"] == LIMIT
    assert LIMIT < cut["measured_bytes"] <= LIMIT + OVERSHOOT
    # Cut while it ran, not after: the tree came near the limit (the count includes
    # rsync's protocol bytes, so the cut may come up to a file early) and never got far.
    assert LIMIT - FILE < sampler.largest <= LIMIT + OVERSHOOT
    on_disk = tree_size(api.uploads / "upload_toolarge")
    assert on_disk <= LIMIT + OVERSHOOT
    assert (api.uploads / "upload_toolarge" / CUT_MARKER).is_file()
    wait_until(lambda: watchers() == [], 10, "the watcher ends with its transfer")
    # Nothing of a cut upload can be finalized.
    with pytest.raises(FlashpodsError) as refused:
        client.finalize_upload("upload_toolarge")
    assert (refused.value.code, refused.value.status) == ("insufficient_storage", 507)


def test_the_sdk_reports_upload_too_large_and_deletes_the_cut_upload(
    limited_host: tuple[Api, str], tmp_path: Path
) -> None:
    api, rsync_url = limited_host
    project = tmp_path / "project"
    small_files(project, 4 * LIMIT)
    client = api.client(rsync_url)
    with pytest.raises(FlashpodsError) as err:
        client.upload(project, upload_id="upload_sdkcut")
    assert err.value.code == "upload_too_large"
    assert f"limit of {LIMIT} bytes" in err.value.message
    assert list(api.uploads.iterdir()) == []  # the cut upload was deleted
    assert client.get_upload("upload_sdkcut").state == "expired"


def test_uploads_under_the_limit_and_rewrites_over_a_base_go_through(
    limited_host: tuple[Api, str], tmp_path: Path
) -> None:
    """A base of 6 MiB whose every file changes: rsync writes 6 MiB more into an upload
    that starts at 6 MiB (12 MiB written in all, over the limit) while the tree stays at
    6 MiB; the watcher measures the tree before it cuts, so this goes through."""
    api, rsync_url = limited_host
    project = tmp_path / "project"
    small_files(project, 6 << 20)
    client = api.client(rsync_url)
    base = client.upload(project, upload_id="upload_under")
    assert (base.size_bytes, base.file_count) == (6 << 20, 96)
    small_files(project, 6 << 20, fill=0x33, mtime=1_000_000_000)
    client.create_upload("upload_rewrite", base_upload_id=base.upload_id)
    stats = run_rsync(project, rsync_url, "upload_rewrite")
    assert stats is not None and stats.literal_bytes >= 6 << 20  # every file rewritten
    again = client.finalize_upload("upload_rewrite")
    assert (again.size_bytes, again.file_count) == (6 << 20, 96)
    wait_until(lambda: watchers() == [], 10, "the watchers end with their transfers")


def test_preallocation_is_refused(limited_host: tuple[Api, str], tmp_path: Path) -> None:
    """fallocate takes space that no write counts: the module refuses --preallocate."""
    api, rsync_url = limited_host
    project = tmp_path / "project"
    small_files(project, 1 << 20)
    refused = subprocess.run(
        ["rsync", "-a", "--preallocate", f"{project}/", f"{rsync_url}/upload_prealloc/"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 4, refused.stderr  # rsync: "requested action not supported"
    assert "refuse --preallocate" in refused.stderr
    assert not (api.uploads / "upload_prealloc").exists()


ENTRY_LIMIT = 2_000
# Entries rsync creates while the watcher lists the tree once: the walk runs 2 ms of
# every 22 (~9% of a core), so it takes ~11x its CPU time, and rsync makes empty
# directories at tens of thousands a second. Measured here 1,400-3,800 over the limit
# (docs/trust.md W6), once 5,434 in a full CI run on 2 busy cores; the overshoot grows
# with the limit (it is a share of it). Still far below the 60,000 of the flood.
ENTRY_OVERSHOOT = 4 * ENTRY_LIMIT


@pytest.fixture
def entry_limited_host(tmp_path: Path, podman_socket: Path) -> Iterator[tuple[Api, str]]:
    (tmp_path / "rsyncd").mkdir()
    limit = str(ENTRY_LIMIT)
    try:
        with (
            flashpods_api(
                tmp_path / "api", podman_socket, "entries", FLASHPODS_UPLOAD_MAX_ENTRIES=limit
            ) as api,
            rsync_daemon(tmp_path / "rsyncd", api.uploads, upload_max_entries=ENTRY_LIMIT) as url,
        ):
            yield api, url
    except (HostError, TimeoutError) as exc:
        pytest.fail(str(exc), pytrace=False)


def test_a_flood_of_empty_directories_is_cut_at_the_entry_limit_while_rsync_writes(
    entry_limited_host: tuple[Api, str], tmp_path: Path
) -> None:
    """60,000 empty directories: no file data, so no byte count stops them; the watcher's
    walk does, near the entry limit. The SDK says upload_too_many_entries and deletes
    the upload; nothing is left on the host."""
    api, rsync_url = entry_limited_host
    project = tmp_path / "project"
    project.mkdir()
    for n in range(60):
        group = project / f"g{n:02d}"
        group.mkdir()
        for m in range(1000):
            (group / f"d{m:03d}").mkdir()
    client = api.client(rsync_url)
    with (
        LargestCount(api.uploads / "upload_flood", every=0.002) as sampler,
        pytest.raises(FlashpodsError) as err,
    ):
        client.upload(project, upload_id="upload_flood")
    cut = err.value.details["cut"]
    print(
        f"entries: largest sampled {sampler.largest} ({sampler.samples} samples), "
        f"counted at the cut {cut['measured_entries']}, limit {ENTRY_LIMIT}"
    )
    assert (err.value.code, err.value.status) == ("upload_too_many_entries", None)
    assert f"limit of {ENTRY_LIMIT}" in err.value.message
    assert cut["limit_entries"] == ENTRY_LIMIT
    assert ENTRY_LIMIT < cut["measured_entries"] <= ENTRY_LIMIT + ENTRY_OVERSHOOT
    # Cut while it ran: the tree reached the limit and never got far past it.
    assert ENTRY_LIMIT < sampler.largest <= ENTRY_LIMIT + ENTRY_OVERSHOOT
    assert list(api.uploads.iterdir()) == []  # the cut upload was deleted
    assert client.get_upload("upload_flood").state == "expired"
    wait_until(lambda: watchers(ENTRY_LIMIT) == [], 10, "the watcher ends with its transfer")


def test_an_upload_at_the_entry_limit_goes_through(
    entry_limited_host: tuple[Api, str], tmp_path: Path
) -> None:
    api, rsync_url = entry_limited_host
    project = tmp_path / "project"
    project.mkdir()
    for n in range(ENTRY_LIMIT // 2):  # a directory and a file in it: 2 entries each
        (project / f"d{n:04d}").mkdir()
        (project / f"d{n:04d}" / "f").write_bytes(b"x")
    assert tree_entries(project) == ENTRY_LIMIT
    upload = api.client(rsync_url).upload(project, upload_id="upload_atlimit")
    assert (upload.state, upload.file_count) == ("finalized", ENTRY_LIMIT // 2)
    wait_until(lambda: watchers(ENTRY_LIMIT) == [], 10, "the watcher ends with its transfer")
