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
