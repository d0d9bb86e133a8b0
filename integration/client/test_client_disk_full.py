"""A host out of space: the real rsync's "No space left on device" becomes
upload_disk_full, and the partial upload does not stay behind on the host."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from client_stack import Api, flashpods_api, rsync_daemon
from flashpods.client.errors import FlashpodsError
from flashpods_testing.localhost import HostError
from flashpods_testing.trees import tree_record


@pytest.fixture
def small_host(tmp_path: Path, podman_socket: Path) -> Iterator[tuple[Api, str]]:
    """An API whose whole state (uploads included) lives on a 4 MB tmpfs."""
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], check=True)
    try:
        (tmp_path / "rsyncd").mkdir()
        with (
            flashpods_api(disk / "api", podman_socket, "small") as api,
            rsync_daemon(tmp_path / "rsyncd", api.uploads) as url,
        ):
            yield api, url
    except (HostError, TimeoutError) as exc:
        pytest.fail(str(exc), pytrace=False)
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_upload_disk_full(small_host: tuple[Api, str], tmp_path: Path) -> None:
    api, rsync_url = small_host
    project = tmp_path / "big"
    project.mkdir()
    (project / "blob.bin").write_bytes(b"\x5a" * (8 << 20))
    client = api.client(rsync_url)
    with pytest.raises(FlashpodsError) as err:
        client.upload(project, upload_id="upload_diskfull")
    assert (err.value.code, err.value.status) == ("upload_disk_full", None)
    assert "No space left" in err.value.details["rsync_stderr"]
    assert list(api.uploads.iterdir()) == []  # the partial upload was deleted
    assert client.get_upload("upload_diskfull").state == "expired"  # never usable by a job


def test_a_base_copy_on_a_full_disk_is_refused_and_leaves_nothing(
    small_host: tuple[Api, str], tmp_path: Path
) -> None:
    """The base is still usable (finalized, no job), so the host copies it: the real
    ENOSPC half-way is 507 insufficient_storage, and neither the copy nor an upload row
    stays behind; the base itself is untouched."""
    api, rsync_url = small_host
    project = tmp_path / "project"
    project.mkdir()
    for n in range(5):
        (project / f"part{n}.bin").write_bytes(bytes([n]) * (500 << 10))
    client = api.client(rsync_url)
    base = client.upload(project)
    snapshots = api.root / "snapshots"
    before = tree_record(snapshots / base.upload_id)
    with pytest.raises(FlashpodsError) as err:
        client.create_upload("upload_nospace", base_upload_id=base.upload_id)
    assert (err.value.code, err.value.status) == ("insufficient_storage", 507)
    assert list(api.uploads.iterdir()) == []
    assert [p.name for p in snapshots.iterdir()] == [base.upload_id]
    assert tree_record(snapshots / base.upload_id) == before
    with pytest.raises(FlashpodsError) as missing:
        client.get_upload("upload_nospace")
    assert missing.value.code == "upload_not_found"
