"""Artifact names and destinations that try to leave the chosen directory are refused,
against a real job's real artifacts; nothing is written anywhere else."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import requests
from client_stack import Api
from flashpods.client.errors import FlashpodsError


@pytest.fixture(scope="module")
def finished_job(api: Api, rsync_url: str) -> str:
    client = api.client(rsync_url)
    job = client.create_worker(
        "mkdir -p /artifacts/sub && echo inner > /artifacts/sub/x.txt"
        " && echo top > /artifacts/t.txt",
        cpus=1,
        memory_gb=1,
    )
    assert client.wait(job.job_id).status == "completed"
    return job.job_id


@pytest.mark.parametrize(
    "name",
    ["../t.txt", "../../../tmp/evil", "/etc/passwd", "sub/../../t.txt", "sub\\..\\x", "sub//x.txt"],
)
def test_escaping_names_are_refused(
    api: Api, rsync_url: str, finished_job: str, tmp_path: Path, name: str
) -> None:
    target = tmp_path / "dl"
    with pytest.raises(FlashpodsError) as err:
        api.client(rsync_url).download_artifact(finished_job, name, target)
    assert (err.value.code, err.value.status) == ("invalid_artifact_path", None)
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_the_api_refuses_them_too(api: Api, finished_job: str) -> None:
    # Without the client's check (raw HTTP), the API answers 400 invalid_artifact_name.
    response = requests.get(
        f"{api.url}/jobs/{finished_job}/artifacts/..%2Ft.txt",
        headers={"Authorization": f"Bearer {api.token}"},
        timeout=10,
    )
    assert (response.status_code, response.json()["error"]) == (400, "invalid_artifact_name")


def test_a_symlink_in_the_target_cannot_redirect_the_download(
    api: Api, rsync_url: str, finished_job: str, tmp_path: Path
) -> None:
    target, outside = tmp_path / "dl", tmp_path / "outside"
    target.mkdir()
    outside.mkdir()
    os.symlink(outside, target / "sub")
    client = api.client(rsync_url)
    with pytest.raises(FlashpodsError) as err:
        client.download_artifact(finished_job, "sub/x.txt", target)
    assert err.value.code == "invalid_artifact_path"
    assert list(outside.iterdir()) == []
    # save_as picks another place inside the target: that is allowed.
    saved = client.download_artifact(finished_job, "sub/x.txt", target, save_as="inner.txt")
    assert saved == target.resolve() / "inner.txt" and saved.read_text() == "inner\n"
    with pytest.raises(FlashpodsError):
        client.download_artifact(finished_job, "t.txt", target, save_as="../t.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dl", "outside"]
