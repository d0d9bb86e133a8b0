"""Delta re-upload on the API side (POST /uploads with a base): a snapshot in use is
copied and never changes, one whose job is over is kept and then moved, bases that cannot
be used give a full upload, and kept snapshots count against the limits and expire."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import Any

import pytest
from api_fakes import FakeRuntime
from api_harness import Api, start_api, with_config
from flashpods.api import uploads as uploads_module
from flashpods.api.config import Config
from flashpods.api.uploads import base_use, staging_name
from flashpods_testing.trees import tree_record

FILES = {"src/main.py": b"print(1)\n", "src/lib/util.py": b"x = 2\n" * 100, "README": b"r"}


def create(api: Api, upload_id: str, base: str | None = None) -> dict[str, Any]:
    response = api.post("/uploads", json={"upload_id": upload_id, "base_upload_id": base})
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def start_job(api: Api, upload_id: str) -> str:
    response = api.post("/jobs", json={"type": "worker", "command": "x", "files_id": upload_id})
    assert response.status_code == 201, response.text
    job_id: str = response.json()["job_id"]
    api.runtime.run(job_id)
    return job_id


def finalize(api: Api, upload_id: str) -> dict[str, Any]:
    response = api.post(f"/uploads/{upload_id}/finalize")
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def contents(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def job(status: str, job_type: str = "worker", cancel_requested: int = 0) -> dict[str, Any]:
    return {"type": job_type, "status": status, "cancel_requested": cancel_requested}


@pytest.mark.parametrize(
    ("row", "job_row", "use"),
    [
        (None, None, "not_found"),
        ({"state": "uploading", "kept_until": None}, None, "not_finalized"),
        ({"state": "finalized", "kept_until": None}, None, "copy"),
        ({"state": "finalized", "kept_until": None}, job("pending"), "copy"),  # reserved
        ({"state": "consumed", "kept_until": None}, job("running"), "copy"),
        ({"state": "consumed", "kept_until": None}, job("cancelled", cancel_requested=1), "copy"),
        ({"state": "consumed", "kept_until": 5.0}, job("completed"), "move"),  # job over
        ({"state": "consumed", "kept_until": None}, job("completed"), "gone"),  # dropped/moved
        ({"state": "expired", "kept_until": None}, None, "gone"),
        # Every job gets the snapshot read-only (an agent works on its own copy).
        ({"state": "finalized", "kept_until": None}, job("pending", "agent"), "copy"),
        ({"state": "consumed", "kept_until": None}, job("running", "agent"), "copy"),
        ({"state": "consumed", "kept_until": 5.0}, job("completed", "agent"), "move"),
    ],
)
def test_what_a_base_is_good_for(
    row: dict[str, Any] | None, job_row: dict[str, Any] | None, use: str
) -> None:
    assert base_use(row, job_row) == use


def test_an_upload_without_a_base_starts_empty(api: Api) -> None:
    body = create(api, "upload_plain")
    assert body["state"] == "uploading" and body["expires_at"] is not None
    assert body["base_upload_id"] is None and body["base_unavailable"] is None
    incoming = api.config.uploads_path / "upload_plain"
    assert os.listdir(incoming) == [] and (incoming.stat().st_mode & 0o777) == 0o700
    api.upload("upload_plain", {"a": b"1"})  # rsync fills it, the client finalizes
    assert api.get("/uploads/upload_plain").json()["size_bytes"] == 1


def test_a_base_in_use_is_copied_and_never_changes(api: Api) -> None:
    api.upload("upload_a", FILES)
    job = start_job(api, "upload_a")  # running: its /work is upload_a's snapshot
    snapshot = api.config.snapshots_path / "upload_a"
    before = tree_record(snapshot)

    body = create(api, "upload_b", base="upload_a")
    assert body["base_upload_id"] == "upload_a" and body["base_unavailable"] is None
    incoming = api.config.uploads_path / "upload_b"
    copied = tree_record(incoming)
    assert contents(incoming) == FILES
    for rel, entry in before.items():
        assert copied[rel][0] != entry[0], rel  # no inode shared
        assert copied[rel][7] == entry[7] or rel == ".", rel  # mtimes kept
    # What rsync does with the copy: change a file in place (chmod, utime), replace one,
    # delete one, add one; then finalize.
    os.chmod(incoming / "src" / "main.py", 0o600)
    os.utime(incoming / "src" / "main.py", ns=(1, 2))
    (incoming / "README").write_bytes(b"new readme")
    (incoming / "src" / "lib" / "util.py").unlink()
    (incoming / "added").write_bytes(b"+")
    assert finalize(api, "upload_b")["base_upload_id"] == "upload_a"
    assert tree_record(snapshot) == before
    assert api.get("/uploads/upload_a").json()["state"] == "consumed"

    api.runtime.finish(job, 0)
    # A newer upload was built on it: it is nobody's base any more.
    assert not snapshot.exists()
    assert contents(api.config.snapshots_path / "upload_b") == {
        "src/main.py": FILES["src/main.py"],
        "README": b"new readme",
        "added": b"+",
    }


def test_a_finished_jobs_snapshot_is_kept_then_moved_into_the_next_upload(api: Api) -> None:
    api.upload("upload_a", FILES)
    api.runtime.finish(start_job(api, "upload_a"), 0)
    snapshot = api.config.snapshots_path / "upload_a"
    before = tree_record(snapshot)  # kept as the folder's next base

    body = create(api, "upload_b", base="upload_a")
    assert body["base_upload_id"] == "upload_a" and body["base_unavailable"] is None
    assert not snapshot.exists()
    # Moved, not copied: the same inodes, now the new upload's (nothing else can use them).
    moved = tree_record(api.config.uploads_path / "upload_b")
    assert moved.pop(".")[0] == before.pop(".")[0]  # the top's ctime is the rename's
    assert moved == before
    again = create(api, "upload_c", base="upload_a")
    assert again["base_upload_id"] is None and again["base_unavailable"] == "gone"
    assert os.listdir(api.config.uploads_path / "upload_c") == []


def test_an_agents_snapshot_is_a_base_like_any_other(api: Api) -> None:
    api.upload("upload_agent", FILES)
    agent = {"type": "agent", "task": "t", "git_branch": "b", "files_id": "upload_agent"}
    job_id = api.post("/jobs", json=agent).json()["job_id"]
    api.runtime.run(job_id)
    running = create(api, "upload_during", base="upload_agent")
    assert (running["base_upload_id"], running["base_unavailable"]) == ("upload_agent", None)
    api.runtime.finish(job_id, 0)
    assert (api.config.snapshots_path / "upload_agent").is_dir()  # kept as the next base
    after = create(api, "upload_after", base="upload_agent")
    assert (after["base_upload_id"], after["base_unavailable"]) == ("upload_agent", None)


def test_bases_that_cannot_be_used_give_a_full_upload(api: Api) -> None:
    api.upload("upload_expired", {"a": b"1"})
    api.runtime.finish(start_job(api, "upload_expired"), 0)
    api.server.app.cleaner.run_once(now=time.time() + api.config.upload_finalized_ttl + 1)
    assert not (api.config.snapshots_path / "upload_expired").exists()
    api.upload("upload_open", {"a": b"1"}, finalize=False)  # rsync's, not yet seen by the API
    api.upload("upload_deleted", {"a": b"1"})
    assert api.delete("/uploads/upload_deleted").status_code == 204
    cases = {
        "upload_nobody": "not_found",
        "upload_open": "not_finalized",
        "upload_deleted": "gone",
        "upload_expired": "gone",
    }
    for n, (base, problem) in enumerate(cases.items()):
        body = create(api, f"upload_new{n}", base=base)
        assert (body["base_upload_id"], body["base_unavailable"]) == (None, problem), base
        assert os.listdir(api.config.uploads_path / f"upload_new{n}") == []
    assert sorted(os.listdir(api.config.snapshots_path)) == []


def test_a_base_that_vanishes_during_its_copy_gives_a_full_upload(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.upload("upload_a", FILES)

    def vanished(source: Path, target: Path) -> None:
        raise FileNotFoundError(errno.ENOENT, "gone", str(source))

    monkeypatch.setattr(uploads_module, "copy_tree", vanished)
    body = create(api, "upload_b", base="upload_a")
    assert (body["base_upload_id"], body["base_unavailable"]) == (None, "gone")
    assert os.listdir(api.config.uploads_path / "upload_b") == []


def test_a_full_disk_during_the_copy_is_507_and_leaves_nothing(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.upload("upload_a", FILES)
    real = uploads_module.copy_tree

    def disk_full(source: Path, target: Path) -> None:
        real(source, target)  # a whole copy in the staging directory, then the disk fills
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(uploads_module, "copy_tree", disk_full)
    response = api.post("/uploads", json={"upload_id": "upload_b", "base_upload_id": "upload_a"})
    assert response.status_code == 507 and response.json()["error"] == "insufficient_storage"
    assert "/tmp/" not in response.text
    assert os.listdir(api.config.snapshots_path) == ["upload_a"]
    assert not (api.config.uploads_path / "upload_b").exists()
    assert api.get("/uploads/upload_b").status_code == 404
    assert api.server.app.uploads.copying == {}


def test_kept_snapshots_expire_and_count_against_the_total(config: Config) -> None:
    api = start_api(with_config(config, uploads_total_max_bytes=250), FakeRuntime())
    try:
        cleaner = api.server.app.cleaner
        api.upload("upload_old", {"a": b"x" * 100})
        api.runtime.finish(start_job(api, "upload_old"), 0)
        api.upload("upload_newer", {"a": b"x" * 100})
        api.runtime.finish(start_job(api, "upload_newer"), 0)
        uploads = api.server.app.uploads
        assert uploads.used_bytes(None) == 200  # both kept snapshots count

        # Room for 100 more bytes only by dropping the oldest kept snapshot.
        api.upload("upload_third", {"a": b"x" * 100})
        assert not (api.config.snapshots_path / "upload_old").exists()
        assert (api.config.snapshots_path / "upload_newer").exists()
        assert uploads.used_bytes(None) == 200

        # An upload started from a base counts its base's size until it is finalized.
        create(api, "upload_b", base="upload_third")  # a finalized base: copied
        assert uploads.used_bytes(None) == 200  # upload_newer had to go for it
        assert not (api.config.snapshots_path / "upload_newer").exists()
        refused = api.post(
            "/uploads", json={"upload_id": "upload_c", "base_upload_id": "upload_third"}
        )
        assert refused.status_code == 507 and refused.json()["error"] == "insufficient_storage"
        assert refused.json()["details"] == {
            "size_bytes": 100,
            "used_bytes": 200,
            "total_max_bytes": 250,
        }
        assert not (api.config.uploads_path / "upload_c").exists()

        finished = start_job(api, "upload_third")
        api.runtime.finish(finished, 0)
        assert (api.config.snapshots_path / "upload_third").exists()  # kept: b not final yet
        report = cleaner.run_once(now=time.time() + api.config.upload_finalized_ttl + 1)
        assert report.kept_snapshots_dropped == 1
        assert not (api.config.snapshots_path / "upload_third").exists()
        assert api.get("/uploads/upload_third").json()["state"] == "consumed"
    finally:
        api.server.stop(grace=2)


def test_cleanup_spares_a_copy_in_progress_and_removes_a_leftover_one(api: Api) -> None:
    snapshots = api.config.snapshots_path
    (snapshots / staging_name("upload_busy")).mkdir()
    (snapshots / staging_name("upload_crashed")).mkdir()
    api.server.app.uploads.copying["upload_busy"] = 10
    api.server.app.cleaner.run_once()
    assert os.listdir(snapshots) == [staging_name("upload_busy")]
