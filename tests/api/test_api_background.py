"""Cleanup (TTLs, caps, orphans, cleaning -> cleaned) and recovery (the decision table and
its executor) with the fake runtime; clocks are passed in, nothing sleeps."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import pytest
from api_fakes import FakeRuntime
from api_harness import Api, start_api, with_config
from flashpods.api.config import Config
from flashpods.api.db import MIGRATIONS
from flashpods.api.recovery import END_GRACE_SECONDS, Action, decide
from flashpods.api.runtime import ContainerInfo

HOUR = 3600.0


def finished(api: Api, key: str | None = None, artifacts: dict[str, bytes] | None = None) -> str:
    body = {"type": "worker", "command": "x", "cpus": 1, "memory_gb": 1}
    if key:
        body["client_job_id"] = key
    job_id = api.post("/jobs", json=body).json()["job_id"]
    api.runtime.run(job_id)
    api.runtime.log(job_id, "line")
    api.runtime.finish(job_id, 0, artifacts=artifacts or {"a.txt": b"abc"})
    return job_id


def status(api: Api, job_id: str) -> str:
    return api.get(f"/jobs/{job_id}").json()["status"]  # type: ignore[no-any-return]


# --- cleanup -----------------------------------------------------------------------------


def test_job_goes_cleaning_then_cleaned_and_key_is_released(api: Api) -> None:
    key = str(uuid.uuid4())
    job_id = finished(api, key)
    cleaner = api.server.app.cleaner
    artifacts_dir = api.config.artifacts_path / job_id
    log_path = api.config.logs_path / f"{job_id}.log"
    (api.config.logs_path / f".{job_id}.ctr.log").write_text("raw")

    cleaner.run_once(now=time.time() + 0.5 * HOUR)
    assert status(api, job_id) == "completed" and artifacts_dir.exists()

    cleaner.run_once(now=time.time() + 1.5 * HOUR)  # artifacts TTL (1 h) passed
    assert status(api, job_id) == "cleaning"
    assert not artifacts_dir.exists() and log_path.exists()
    assert api.get(f"/jobs/{job_id}/artifacts").json()["error"] == "artifacts_deleted"
    assert api.get(f"/jobs/{job_id}/output").status_code == 200
    # Key still active: a replay returns the same job.
    replay = api.post("/jobs", json={"type": "worker", "command": "x", "client_job_id": key})
    assert replay.status_code == 200 and replay.json()["job_id"] == job_id

    cleaner.run_once(now=time.time() + 25 * HOUR)  # logs TTL (24 h) passed
    job = api.get(f"/jobs/{job_id}").json()
    assert job["status"] == "cleaned" and job["final_status"] == "completed"
    assert not log_path.exists() and not (api.config.logs_path / f".{job_id}.ctr.log").exists()
    assert api.get(f"/jobs/{job_id}/output").json()["error"] == "logs_deleted"
    fresh = api.post("/jobs", json={"type": "worker", "command": "x", "client_job_id": key})
    assert fresh.status_code == 201 and fresh.json()["job_id"] != job_id
    assert [r["active"] for r in api.rows("idempotency_keys")] == [0, 1]


def test_cleanup_never_touches_running_jobs(api: Api) -> None:
    job_id = api.post("/jobs", json={"type": "worker", "command": "x"}).json()["job_id"]
    api.runtime.run(job_id)
    api.server.app.cleaner.run_once(now=time.time() + 100 * HOUR)
    assert status(api, job_id) == "running"
    assert (api.config.artifacts_path / job_id).exists()


def test_log_cap_deletes_oldest_ended_first(config: Config) -> None:
    api = start_api(with_config(config, logs_total_max_bytes=120), FakeRuntime())
    try:
        old, new = finished(api), finished(api)
        for job_id in (old, new):
            (api.config.logs_path / f"{job_id}.log").write_bytes(b"x" * 100)
        report = api.server.app.cleaner.run_once()
        assert report.logs_deleted == 1
        assert not (api.config.logs_path / f"{old}.log").exists()
        assert (api.config.logs_path / f"{new}.log").exists()
        assert status(api, old) == "completed"  # artifacts still there: not cleaning yet
    finally:
        api.server.stop(grace=2)


def test_artifact_cap_deletes_oldest_ended_first(config: Config) -> None:
    api = start_api(with_config(config, artifacts_total_max_bytes=150), FakeRuntime())
    try:
        old = finished(api, artifacts={"a": b"x" * 100})
        new = finished(api, artifacts={"a": b"x" * 100})
        api.server.app.cleaner.run_once()
        assert status(api, old) == "cleaning" and status(api, new) == "completed"
        assert not (api.config.artifacts_path / old).exists()
    finally:
        api.server.stop(grace=2)


def test_upload_ttls_and_orphans(api: Api) -> None:
    cfg = api.config
    api.upload("upload_open", {"a": b"1"}, finalize=False)  # discovered by the scan
    api.upload("upload_done", {"a": b"1"})
    (cfg.uploads_path / "not-an-upload").mkdir()
    (cfg.snapshots_path / "upload_ghost").mkdir()
    cleaner = api.server.app.cleaner
    report = cleaner.run_once()
    assert report.orphans_removed == 2
    assert not (cfg.uploads_path / "not-an-upload").exists()
    assert not (cfg.snapshots_path / "upload_ghost").exists()
    assert api.get("/uploads/upload_open").json()["state"] == "uploading"

    cleaner.run_once(now=time.time() + 31 * 60)  # not finalized for 30 min
    assert api.get("/uploads/upload_open").json()["state"] == "expired"
    assert not (cfg.uploads_path / "upload_open").exists()
    assert api.get("/uploads/upload_done").json()["state"] == "finalized"

    cleaner.run_once(now=time.time() + 61 * 60)  # finalized and unused for 60 min
    assert api.get("/uploads/upload_done").json()["state"] == "expired"
    assert not (cfg.snapshots_path / "upload_done").exists()


def test_rsync_writes_after_finalize_land_nowhere(api: Api) -> None:
    api.upload("upload_r", {"a": b"1"})
    # A new rsync to the same id recreates the directory in the module: an orphan.
    (api.config.uploads_path / "upload_r").mkdir()
    (api.config.uploads_path / "upload_r" / "evil").write_text("x")
    api.server.app.cleaner.run_once()
    assert not (api.config.uploads_path / "upload_r").exists()
    assert sorted(p.name for p in (api.config.snapshots_path / "upload_r").iterdir()) == ["a"]


def test_reserved_upload_does_not_expire(api: Api) -> None:
    api.upload("upload_res", {"a": b"1"})
    api.post("/jobs", json={"type": "worker", "command": "x", "files_id": "upload_res"})
    api.server.app.cleaner.run_once(now=time.time() + 2 * HOUR)
    assert api.get("/uploads/upload_res").json()["state"] == "finalized"
    assert (api.config.snapshots_path / "upload_res").exists()


def test_orphan_job_files_are_removed(api: Api) -> None:
    stray = api.config.artifacts_path / "job_00000000000000aa"
    stray.mkdir()
    (api.config.logs_path / "job_00000000000000aa.log").write_text("x")
    (api.config.logs_path / "operator-notes.txt").write_text("keep")
    api.server.app.cleaner.run_once()
    assert not stray.exists() and not (api.config.logs_path / "job_00000000000000aa.log").exists()
    assert (api.config.logs_path / "operator-notes.txt").exists()


# --- recovery ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("db", "cancel", "container", "startup", "action"),
    [
        ("running", False, "running", True, Action.RESUME),
        ("starting", False, "running", True, Action.RESUME),
        ("running", False, "exited", True, Action.RESUME),
        ("starting", False, None, True, Action.FAIL_NOT_FOUND),
        ("pending", False, None, True, Action.FAIL_NOT_FOUND),
        ("running", False, None, True, Action.FAIL_LOST),
        (None, False, "running", True, Action.REMOVE),
        (None, False, "exited", False, Action.REMOVE),
        ("completed", False, "exited", False, Action.REMOVE),
        ("cancelled", True, "running", True, Action.RESUME_AND_CANCEL),
        ("cancelled", True, "running", False, Action.NOTHING),
        ("cancelled", True, None, False, Action.CANCEL_DONE),
        ("running", False, "running", False, Action.NOTHING),
        # Periodic passes finish active jobs whose container has ended.
        ("running", False, "exited", False, Action.RESUME),
        ("starting", False, "stopped", False, Action.RESUME),
        ("cancelled", True, "exited", False, Action.RESUME_AND_CANCEL),
        ("completed", False, None, False, Action.NOTHING),
    ],
)
def test_recovery_table(
    db: str | None, cancel: bool, container: str | None, startup: bool, action: Action
) -> None:
    assert decide(db, cancel, container, startup) is action


def info(job_id: str, state: str, exit_code: int | None = None) -> ContainerInfo:
    return ContainerInfo(f"c{job_id}", job_id, state, exit_code, False, datetime.now(UTC), None)


def test_restart_recovers_every_case(config: Config) -> None:
    """Jobs left behind by a stopped API, and what podman shows at the next start."""
    first = start_api(config, FakeRuntime())
    ids = {}
    for name in ("running", "exited", "lost", "never_started"):
        ids[name] = first.post(
            "/jobs", json={"type": "worker", "command": "x", "cpus": 1, "memory_gb": 1}
        ).json()["job_id"]
    for name in ("running", "exited", "lost"):
        first.runtime.run(ids[name])
    first.server.stop(grace=2)

    runtime = FakeRuntime()
    runtime.foreign = [
        info(ids["running"], "running"),
        info(ids["exited"], "exited", 3),
        info("job_00000000000000ff", "running"),  # no job row: orphan
    ]
    second = start_api(config, runtime)
    try:
        second.server.app.reconciler.run_once()
        assert sorted(runtime.resumed) == sorted([ids["running"], ids["exited"]])
        assert runtime.removed == ["cjob_00000000000000ff"]
        jobs = {name: second.get(f"/jobs/{job_id}").json() for name, job_id in ids.items()}
        assert jobs["running"]["status"] == "running"
        assert (jobs["exited"]["status"], jobs["exited"]["exit_code"]) == ("failed", 3)
        assert (jobs["lost"]["status"], jobs["lost"]["error"]) == (
            "failed",
            "container_lost_on_recovery",
        )
        assert (jobs["never_started"]["status"], jobs["never_started"]["error"]) == (
            "failed",
            "container_not_found_on_recovery",
        )
    finally:
        second.server.stop(grace=2)


def test_periodic_pass_needs_two_misses_and_survives_podman_errors(api: Api) -> None:
    reconciler = api.server.app.reconciler
    reconciler.run_once()  # start-up pass
    job_id = api.post("/jobs", json={"type": "worker", "command": "x"}).json()["job_id"]
    api.runtime.run(job_id)
    api.server.app.store.execute(
        "UPDATE jobs SET updated_at = updated_at - 100 WHERE id = ?", (job_id,)
    )
    api.runtime.containers.pop(job_id)  # the container vanished behind our back
    api.runtime.fail_list = True
    with pytest.raises(Exception, match="podman"):
        reconciler.run_once()
    assert status(api, job_id) == "running"
    api.runtime.fail_list = False
    reconciler.run_once()
    assert status(api, job_id) == "running"  # one miss: maybe it is just being removed
    reconciler.run_once()
    job = api.get(f"/jobs/{job_id}").json()
    assert (job["status"], job["error"]) == ("failed", "container_lost_on_recovery")


def test_restart_loses_nothing(config: Config) -> None:
    first = start_api(config, FakeRuntime())
    first.upload("upload_keep", {"f": b"data"})
    job_id = finished(first, artifacts={"r.txt": b"result"})
    before = {t: first.rows(t) for t in ("jobs", "uploads", "artifacts", "idempotency_keys")}
    first.server.stop(grace=2)
    second = start_api(config, FakeRuntime())
    try:
        assert {t: second.rows(t) for t in before} == before
        assert second.get(f"/jobs/{job_id}/artifacts/r.txt").content == b"result"
        assert second.get("/uploads/upload_keep").json()["state"] == "finalized"
        assert second.server.app.store.schema_version() == len(MIGRATIONS)
        mode = second.server.app.store.one("PRAGMA journal_mode")
        assert mode == {"journal_mode": "wal"}
    finally:
        second.server.stop(grace=2)


def test_late_startup_pass_leaves_this_process_jobs_alone(api: Api) -> None:
    """podman was down at start-up; jobs created since then are already supervised."""
    reconciler = api.server.app.reconciler
    api.runtime.fail_list = True
    with pytest.raises(Exception, match="podman"):
        reconciler.run_once()
    job_id = api.post("/jobs", json={"type": "worker", "command": "x"}).json()["job_id"]
    api.runtime.run(job_id)
    api.runtime.fail_list = False
    reconciler.run_once()  # the start-up pass, finally
    assert api.runtime.resumed == [] and status(api, job_id) == "running"


def test_snapshot_of_an_ended_job_is_removed_if_release_was_missed(api: Api) -> None:
    api.upload("upload_left", {"a": b"1"})
    job_id = api.post(
        "/jobs", json={"type": "worker", "command": "x", "files_id": "upload_left"}
    ).json()["job_id"]
    api.runtime.run(job_id)
    api.server.app.cleaner.run_once()
    assert (api.config.snapshots_path / "upload_left").exists()  # mounted at /work: kept
    api.server.app.uploads.release = lambda job_id: None  # type: ignore[method-assign]
    api.runtime.finish(job_id, 0)  # the API "crashed" before deleting the snapshot
    assert (api.config.snapshots_path / "upload_left").exists()
    api.server.app.cleaner.run_once()
    assert not (api.config.snapshots_path / "upload_left").exists()


def aged(api: Api, job_id: str, seconds: float) -> None:
    """As if the job had started `seconds` ago and nobody had touched its row since."""
    api.server.app.store.execute(
        "UPDATE jobs SET started_at = started_at - ?, created_at = created_at - ?, "
        "updated_at = updated_at - ? WHERE id = ?",
        (seconds, seconds, seconds, job_id),
    )


def all_cpus(api: Api) -> int:
    body = {"type": "worker", "command": "x", "cpus": api.config.host_cpus, "memory_gb": 1}
    return api.post("/jobs", json=body).status_code


def test_periodic_pass_finishes_an_active_job_whose_container_exited(api: Api) -> None:
    reconciler = api.server.app.reconciler
    reconciler.run_once()  # start-up pass
    job_id = api.post("/jobs", json={"type": "worker", "command": "x"}).json()["job_id"]
    api.runtime.run(job_id)
    aged(api, job_id, 100)
    # The container exited and nobody reported it (its supervisor died).
    api.runtime.containers[job_id].state = "exited"
    api.runtime.containers[job_id].exit_code = 4
    reconciler.run_once()
    assert api.runtime.resumed == [job_id]
    job = api.get(f"/jobs/{job_id}").json()
    assert (job["status"], job["exit_code"]) == ("failed", 4)
    assert all_cpus(api) == 201


@pytest.mark.parametrize("cancelled", [False, True])
def test_a_job_past_the_end_bound_is_ended_and_its_container_removed(
    api: Api, cancelled: bool
) -> None:
    reconciler = api.server.app.reconciler
    reconciler.run_once()  # start-up pass
    body = {"type": "worker", "command": "x", "cpus": 2, "timeout_minutes": 1}
    job_id = api.post("/jobs", json=body).json()["job_id"]
    api.runtime.run(job_id)
    if cancelled:  # a cancel whose container never stopped
        api.runtime.cancel = lambda _job_id: None  # type: ignore[method-assign]
        assert api.delete(f"/jobs/{job_id}").status_code == 200
    within = 60 + END_GRACE_SECONDS - 30
    aged(api, job_id, within)
    reconciler.boot -= within
    reconciler.run_once()
    assert status(api, job_id) == ("cancelled" if cancelled else "running")
    assert all_cpus(api) == 429
    aged(api, job_id, 60)
    reconciler.boot -= 60
    reconciler.run_once()
    job = api.get(f"/jobs/{job_id}").json()
    if cancelled:
        assert (job["status"], job["error"]) == ("cancelled", None)
    else:
        assert (job["status"], job["error"]) == ("failed", "end_bound_exceeded")
    assert api.runtime.removed == [f"c{job_id}"]
    assert all_cpus(api) == 201


def test_the_end_bound_counts_from_the_api_start_after_downtime(api: Api) -> None:
    reconciler = api.server.app.reconciler
    reconciler.run_once()
    job_id = api.post(
        "/jobs", json={"type": "worker", "command": "x", "timeout_minutes": 1}
    ).json()["job_id"]
    api.runtime.run(job_id)
    aged(api, job_id, 10 * HOUR)  # long past, but this process only just started
    reconciler.run_once()
    assert status(api, job_id) == "running" and api.runtime.removed == []
