"""Job lifecycle over HTTP with the fake runtime: create, run, finish, cancel, idempotency,
admission under concurrency, container errors."""

from __future__ import annotations

import logging
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from api_harness import Api
from flashpods.api import jobstate


def create(api: Api, **body: Any) -> dict[str, Any]:
    body.setdefault("type", "worker")
    if body["type"] == "worker":
        body.setdefault("command", "echo hi")
    response = api.post("/jobs", json=body)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def test_worker_job_lifecycle(api: Api) -> None:
    api.upload("upload_src", {"main.py": b"print(1)\n"})
    created = create(api, command="python3 main.py", files_id="upload_src", cpus=3, memory_gb=5)
    assert created["created"] is True and created["status"] == "starting"
    job_id = created["job_id"]
    spec = api.runtime.containers[job_id].spec
    assert spec.command == "python3 main.py" and spec.cpus == 3 and spec.memory_gb == 5
    assert spec.upload_dir == api.config.snapshots_path / "upload_src"
    assert spec.image == "ubuntu:22.04" and spec.timeout_minutes == 30
    assert spec.artifacts_dir.is_dir()

    api.runtime.run(job_id)
    job = api.get(f"/jobs/{job_id}").json()
    assert job["status"] == "running" and "elapsed_seconds" in job
    assert api.get("/uploads/upload_src").json()["state"] == "consumed"
    # Still mounted at /work while the job runs: not deleted yet.
    assert (api.config.snapshots_path / "upload_src" / "main.py").exists()

    api.runtime.log(job_id, "hello")
    api.runtime.finish(job_id, 0, artifacts={"out/result.txt": b"42\n", "report.md": b"# r"})
    job = api.get(f"/jobs/{job_id}").json()
    assert job["status"] == "completed" and job["exit_code"] == 0 and job["error"] is None
    assert job["duration_seconds"] >= 0 and job["completed_at"].endswith("Z")
    # Kept, unchanged, as the base of the folder's next upload (test_api_upload_bases.py).
    assert (api.config.snapshots_path / "upload_src" / "main.py").read_bytes() == b"print(1)\n"

    listing = api.get(f"/jobs/{job_id}/artifacts").json()
    assert [a["name"] for a in listing["artifacts"]] == ["out/result.txt", "report.md"]
    assert listing["total_size_bytes"] == 6 and listing["copy_in_progress"] is False
    download = api.get(f"/jobs/{job_id}/artifacts/out/result.txt")
    assert download.status_code == 200 and download.content == b"42\n"
    assert download.headers["Content-Disposition"] == 'attachment; filename="result.txt"'
    assert download.headers["Content-Type"] == "application/octet-stream"

    output = api.get(f"/jobs/{job_id}/output", params={"tail": 1}).json()
    assert output["lines"] == 1 and output["output"].endswith("hello\n")
    assert output["truncated"] is False


def test_agent_job_spec_and_failure_codes(api: Api) -> None:
    created = create(
        api, type="agent", task="fix the bug", context="ctx", git_branch="fix/bug-1", cpus=99
    )
    job_id = created["job_id"]
    spec = api.runtime.containers[job_id].spec
    assert (spec.job_type, spec.task, spec.context, spec.git_branch) == (
        "agent",
        "fix the bug",
        "ctx",
        "fix/bug-1",
    )
    assert spec.cpus == 4  # clamped to the agent maximum
    api.runtime.run(job_id)
    api.runtime.finish(job_id, 137, status="failed", error="oom_killed")
    job = api.get(f"/jobs/{job_id}").json()
    assert (job["status"], job["exit_code"], job["error"]) == ("failed", 137, "oom_killed")
    assert job["task"] == "fix the bug" and "command" not in job


def test_timed_out_reports_actual_runtime(api: Api) -> None:
    job_id = create(api)["job_id"]
    api.runtime.run(job_id)
    api.runtime.finish(job_id, 137, status="timed_out", error="Job exceeded timeout limit")
    job = api.get(f"/jobs/{job_id}").json()
    assert job["status"] == "timed_out" and job["actual_runtime_seconds"] >= 0


def test_idempotent_replay_and_case_insensitive_key(api: Api) -> None:
    key = str(uuid.uuid4())
    first = create(api, client_job_id=key)
    again = api.post(
        "/jobs", json={"type": "worker", "command": "other", "client_job_id": key.upper()}
    )
    assert again.status_code == 200
    assert again.json() == {
        "job_id": first["job_id"],
        "status": "starting",
        "created": False,
        "message": "Existing job returned (idempotent)",
    }
    assert len(api.rows("jobs")) == 1 and api.runtime.started == [first["job_id"]]


def test_eight_concurrent_creates_with_one_key_make_one_job(api: Api) -> None:
    key = str(uuid.uuid4())
    barrier = threading.Barrier(8)

    def one(_: int) -> tuple[int, str]:
        barrier.wait()
        response = api.request(
            "POST", "/jobs", json={"type": "worker", "command": "x", "client_job_id": key}
        )
        return response.status_code, response.json()["job_id"]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    assert sorted(code for code, _ in results) == [200] * 7 + [201]
    assert len({job_id for _, job_id in results}) == 1
    assert len(api.rows("jobs")) == 1 and len(api.rows("idempotency_keys")) == 1
    assert len(api.runtime.started) == 1


def test_concurrent_creates_never_overcommit(api: Api) -> None:
    # Host: 8 CPUs, 16 GB. 20 jobs of 3 CPUs each: at most 2 fit.
    barrier = threading.Barrier(20)

    def one(_: int) -> int:
        barrier.wait()
        response = api.request(
            "POST", "/jobs", json={"type": "worker", "command": "x", "cpus": 3, "memory_gb": 1}
        )
        return response.status_code

    with ThreadPoolExecutor(20) as pool:
        codes = list(pool.map(one, range(20)))
    assert codes.count(201) == 2 and codes.count(429) == 18
    assert len(api.rows("jobs")) == 2
    holding = [
        row for row in api.rows("jobs") if row["status"] in ("pending", "starting", "running")
    ]
    assert sum(row["cpus"] for row in holding) <= api.config.host_cpus


def test_insufficient_resources_details_and_release(api: Api) -> None:
    first = create(api, cpus=6, memory_gb=10)["job_id"]
    before = api.rows("jobs")
    response = api.post("/jobs", json={"type": "worker", "command": "x", "cpus": 4})
    assert response.status_code == 429
    body = response.json()
    assert body["error"] == "insufficient_resources"
    assert body["details"] == {
        "requested": {"cpus": 4, "memory_gb": 4},
        "available": {"cpus": 2, "memory_gb": 6},
        "host_capacity": {"cpus": 8, "memory_gb": 16},
        "running_jobs": 1,
    }
    assert api.rows("jobs") == before and len(api.runtime.started) == 1
    api.runtime.run(first)
    api.runtime.finish(first, 0)
    create(api, cpus=4)  # fits once the first one ended


def test_container_error_fails_the_job_and_expires_the_upload(api: Api) -> None:
    api.upload("upload_x", {"f": b"1"})
    api.runtime.fail_start = "image not found: nosuch:latest"
    response = api.post("/jobs", json={"type": "worker", "command": "x", "files_id": "upload_x"})
    assert response.status_code == 500
    body = response.json()
    assert body["error"] == "container_error"
    job = api.get(f"/jobs/{body['details']['job_id']}").json()
    assert job["status"] == "failed"
    assert job["error"] == "container_error: image not found: nosuch:latest"
    assert api.get("/uploads/upload_x").json()["state"] == "expired"
    assert not (api.config.snapshots_path / "upload_x").exists()
    assert api.runtime.containers == {} and len(api.rows("jobs")) == 1
    # Its resources are free again.
    api.runtime.fail_start = None
    create(api, cpus=8, memory_gb=16)


def test_container_error_body_is_scrubbed_and_the_log_keeps_the_cause(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    api.runtime.fail_start = "podman start failed: open(<path>): Permission denied"
    path = "/var/tmp/fprootless-1/.local/share/containers/storage/overlay/l/ABC"
    api.runtime.fail_cause = f'podman start exited 126: open("{path}"): Permission denied'
    request_id = str(uuid.uuid4())
    with caplog.at_level(logging.INFO, logger="flashpods"):
        response = api.post(
            "/jobs", json={"type": "worker", "command": "x"}, headers={"X-Request-Id": request_id}
        )
    assert response.status_code == 500 and response.headers["X-Request-Id"] == request_id
    body = response.json()
    assert body["error"] == "container_error" and "/var/tmp" not in response.text
    assert body["message"] == f"The job's container could not start: {api.runtime.fail_start}"
    job_id = body["details"]["job_id"]
    assert "/var/tmp" not in api.get(f"/jobs/{job_id}").text
    # One line for the operator: the request id (to find it from the client's error), the
    # job and podman's full message with the path.
    causes = [r for r in caplog.records if "container could not start" in r.getMessage()]
    assert [(r.levelno, r.getMessage()) for r in causes] == [
        (
            logging.ERROR,
            f"request {request_id}: container_error: job {job_id}: container could not "
            f'start: podman start exited 126: open("{path}"): Permission denied',
        )
    ]


def test_cancel_running_job(api: Api) -> None:
    job_id = create(api)["job_id"]
    api.runtime.run(job_id)
    response = api.delete(f"/jobs/{job_id}")
    assert response.status_code == 200
    assert response.json()["job_id"] == job_id and response.json()["status"] == "cancelled"
    for _ in range(100):
        job = api.get(f"/jobs/{job_id}").json()
        if job["exit_code"] is not None:
            break
        threading.Event().wait(0.02)
    assert job["status"] == "cancelled" and job["exit_code"] == 143
    again = api.delete(f"/jobs/{job_id}")
    assert again.status_code == 409 and again.json()["error"] == "job_already_terminal"


def test_cancelled_job_never_becomes_completed(api: Api) -> None:
    job_id = create(api)["job_id"]
    api.runtime.run(job_id)
    # The container exits 0 right as the cancel lands: the runtime reports `completed`.
    assert jobstate.transition(api.server.app.store, job_id, "cancelled", cancel_requested=1)
    api.runtime.finish(job_id, 0)
    job = api.get(f"/jobs/{job_id}").json()
    assert job["status"] == "cancelled" and job["exit_code"] == 0


def test_cancel_while_starting_stops_the_container(api: Api) -> None:
    job_id = create(api)["job_id"]  # fake: stays `starting` until run()
    assert api.delete(f"/jobs/{job_id}").status_code == 200
    for _ in range(100):
        if job_id in api.runtime.cancelled:
            break
        threading.Event().wait(0.02)
    assert job_id in api.runtime.cancelled
    api.runtime.containers.clear()
    assert api.get(f"/jobs/{job_id}").json()["status"] == "cancelled"


def test_cancel_while_pending_never_starts(api: Api) -> None:
    jobs = api.server.app.jobs
    original = jobs.transition
    cancelled: dict[str, int] = {}

    def cancel_first(job_id: str, target: str, *args: Any, **kw: Any) -> bool:
        if target == "starting" and job_id not in cancelled:
            # A DELETE lands between the insert and the start.
            cancelled[job_id] = api.delete(f"/jobs/{job_id}").status_code
        return original(job_id, target, *args, **kw)

    jobs.transition = cancel_first  # type: ignore[method-assign]
    api.upload("upload_p", {"a": b"b"})
    created = create(api, files_id="upload_p")
    assert created["status"] == "cancelled" and list(cancelled.values()) == [200]
    assert api.runtime.started == []
    assert api.get("/uploads/upload_p").json()["state"] == "expired"


def test_list_jobs_newest_first_with_filters(api: Api) -> None:
    ids = [create(api, cpus=1, memory_gb=1)["job_id"] for _ in range(3)]
    api.runtime.run(ids[0])
    api.runtime.finish(ids[0], 0)
    api.runtime.run(ids[1])
    listing = api.get("/jobs").json()
    assert [job["id"] for job in listing["jobs"]] == ids[::-1] and listing["total"] == 3
    assert [j["id"] for j in api.get("/jobs", params={"status": "running"}).json()["jobs"]] == [
        ids[1]
    ]
    assert api.get("/jobs", params={"status": "completed"}).json()["total"] == 1
    limited = api.get("/jobs", params={"limit": 1}).json()
    assert len(limited["jobs"]) == 1 and limited["total"] == 3


def test_one_upload_feeds_one_job(api: Api) -> None:
    api.upload("upload_once", {"a": b"1"})
    barrier = threading.Barrier(4)

    def one(_: int) -> int:
        barrier.wait()
        body = {
            "type": "worker",
            "command": "x",
            "files_id": "upload_once",
            "cpus": 1,
            "memory_gb": 1,
        }
        return api.request("POST", "/jobs", json=body).status_code

    with ThreadPoolExecutor(4) as pool:
        codes = sorted(pool.map(one, range(4)))
    assert codes == [201, 409, 409, 409]
    assert len(api.rows("jobs")) == 1
    delete = api.delete("/uploads/upload_once")  # reserved by the job that has not run yet
    assert delete.status_code == 409 and delete.json()["error"] == "upload_in_use"


def test_cancel_during_a_failing_start_frees_everything(api: Api) -> None:
    api.upload("upload_c", {"a": b"1"})
    real_start = api.runtime.start

    def start_then_fail(spec: Any, hooks: Any) -> None:
        assert api.delete(f"/jobs/{spec.job_id}").status_code == 200  # DELETE during start
        api.runtime.fail_start = "no such image"
        real_start(spec, hooks)

    api.runtime.start = start_then_fail  # type: ignore[method-assign]
    response = api.post(
        "/jobs", json={"type": "worker", "command": "x", "files_id": "upload_c", "cpus": 8}
    )
    assert response.status_code == 500 and response.json()["error"] == "container_error"
    job = api.rows("jobs")[0]
    assert (job["status"], job["cancel_requested"]) == ("cancelled", 0)
    assert api.get("/uploads/upload_c").json()["state"] == "expired"
    api.runtime.start = real_start  # type: ignore[method-assign]
    api.runtime.fail_start = None
    assert api.post("/jobs", json={"type": "worker", "command": "x", "cpus": 8}).status_code == 201
