"""Hostile jobs against the real API and real podman: each ends with the right status,
gives its capacity back (a follow-up job that needs every CPU is admitted), leaves no
container, and stays within its limits while it runs (disk sampled on the host).

The host has 2 CPUs of capacity here, like the issue's measurements.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flashpods.api.runtime.podman_spec import PIDS_LIMIT
from flashpods.common.jobstates import ENDED
from flashpods.common.polling import wait_until
from flashpods_testing.hostile import (
    DD_3G,
    DD_ROOT,
    FLOOD,
    FORK_5000,
    GIB,
    IGNORES_TERM,
    ORPHAN,
    DiskPeak,
)
from flashpods_testing.localhost import JOB_IMAGE
from podman_support import (
    HOSTILE_CPUS,
    HOSTILE_HOST,
    INSTANCE,
    Api,
    cancel_all,
    container_exists,
    post_concurrently,
    running_api,
)

HOST_CPUS = HOSTILE_CPUS
LOG_LIMIT = 8 << 20


@pytest.fixture
def api(tmp_path: Path, podman_socket: Path) -> Iterator[Api]:
    with running_api(
        Api,
        tmp_path,
        podman_socket,
        **HOSTILE_HOST,
        FLASHPODS_LOG_MAX_BYTES=str(LOG_LIMIT),
    ) as process:
        yield process


def create(api: Api, command: str, **extra: Any) -> str:
    body = {"type": "worker", "command": command, "cpus": 1, "memory_gb": 2, **extra}
    response = api.call("POST", "/jobs", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["job_id"])


def log_text(api: Api, job_id: str) -> str:
    return (api.root / "logs" / f"{job_id}.log").read_text(errors="replace")


def assert_released(api: Api, job_id: str) -> None:
    """No container is left, and a job that needs every CPU is admitted and runs."""
    wait_until(lambda: not container_exists(job_id), 30, f"{job_id} removal")
    follow_up = create(api, "true", cpus=HOST_CPUS)
    assert api.wait_status(follow_up, ENDED, 60)["status"] == "completed"
    wait_until(lambda: not container_exists(follow_up), 30, f"{follow_up} removal")


def run_sampled(
    api: Api, podman_socket: Path, command: str, timeout: float, **extra: Any
) -> tuple[dict[str, Any], int]:
    job_id = create(api, command, **extra)
    sampler = DiskPeak(podman_socket, api.root / "artifacts" / job_id, f"job_{job_id}")
    with sampler:
        job = api.wait_status(job_id, ENDED, timeout)
    return job, sampler.peak


def test_dd_3g_into_tmp_stops_at_disk_gb_and_the_outcome_says_so(
    api: Api, podman_socket: Path
) -> None:
    job, peak = run_sampled(api, podman_socket, DD_3G.format(path="/tmp/big"), 120, disk_gb=1)
    assert (job["status"], job["exit_code"], job["error"]) == ("failed", 1, "disk_full")
    assert job["disk_gb"] == 1
    text = log_text(api, job["id"])
    assert "No space left on device" in text
    assert "[flashpods] warning: /tmp filled its 1 GB limit: writes failed with ENOSPC" in text
    assert peak < 64 << 20  # scratch is RAM: nothing of it on the host's disk
    assert_released(api, job["id"])


def test_dd_3g_into_artifacts_stops_at_disk_gb_while_it_runs(api: Api, podman_socket: Path) -> None:
    job, peak = run_sampled(api, podman_socket, DD_3G.format(path="/artifacts/big"), 120, disk_gb=1)
    assert (job["status"], job["exit_code"], job["error"]) == ("failed", 1, "disk_full")
    text = log_text(api, job["id"])
    assert "No space left on device" in text
    warning = "[flashpods] warning: /artifacts filled its 1 GB limit: writes failed with ENOSPC"
    assert warning in text
    # The host's disk sees only what is copied out after the exit: the partial file,
    # within the job's 1 GB (and the artifact rules' limits).
    listed = api.call("GET", f"/jobs/{job['id']}/artifacts").json()["artifacts"]
    assert [a["name"] for a in listed] == ["big"]
    assert 900 << 20 < listed[0]["size_bytes"] <= GIB
    assert peak <= GIB + (16 << 20)
    assert_released(api, job["id"])


def test_dd_3g_into_the_container_root_is_refused(api: Api, podman_socket: Path) -> None:
    job, peak = run_sampled(api, podman_socket, DD_ROOT, 120)
    assert (job["status"], job["exit_code"]) == ("failed", 1)
    assert log_text(api, job["id"]).count("Read-only file system") == 3
    assert peak < 64 << 20
    assert_released(api, job["id"])


def test_a_300_mb_flood_keeps_the_stored_log_within_its_limit(api: Api) -> None:
    job_id = create(api, FLOOD)
    job = api.wait_status(job_id, ENDED, 600)  # 300 MB through conmon on a busy machine
    assert (job["status"], job["exit_code"]) == ("completed", 0)
    data = (api.root / "logs" / f"{job_id}.log").read_bytes()
    assert len(data) <= LOG_LIMIT
    assert data.splitlines()[-1].endswith(b"[TRUNCATED - log exceeded 8 MB limit]")
    assert data.count(b"TRUNCATED") == 1
    assert_released(api, job_id)


def test_cancel_ends_a_job_that_ignores_sigterm_while_writing(api: Api) -> None:
    job_id = create(api, IGNORES_TERM)
    api.wait_status(job_id, {"running"}, 30)
    wait_until(lambda: "tick" in log_text(api, job_id), 30, "the job writing")
    cancel_all(api, {job_id})  # waits for the container to be gone
    job = api.wait_status(job_id, ENDED, 30)
    assert (job["status"], job["exit_code"]) == ("cancelled", 137)  # SIGKILL after the grace
    assert_released(api, job_id)


def test_timeout_ends_a_job_that_ignores_sigterm_while_writing(api: Api) -> None:
    job_id = create(api, IGNORES_TERM, timeout_minutes=1)
    job = api.wait_status(job_id, ENDED, 120)
    assert (job["status"], job["exit_code"]) == ("timed_out", 137)
    assert_released(api, job_id)


def test_a_job_ends_when_its_main_process_exits_and_leaves_nothing(api: Api) -> None:
    job_id = create(api, ORPHAN)
    job = api.wait_status(job_id, ENDED, 60)  # not after the sleep's 600 s
    assert (job["status"], job["exit_code"]) == ("completed", 0)
    assert_released(api, job_id)


def test_5000_children_hit_the_pids_limit(api: Api) -> None:
    job_id = create(api, FORK_5000)
    job = api.wait_status(job_id, ENDED, 120)
    assert (job["status"], job["exit_code"]) == ("failed", 2)  # dash: "Cannot fork"
    assert "Cannot fork" in log_text(api, job_id)
    started = int(api.call("GET", f"/jobs/{job_id}/artifacts/started").text)
    assert 100 < started < PIDS_LIMIT
    assert_released(api, job_id)


def test_20_concurrent_creates_at_capacity_2_admit_exactly_2(api: Api) -> None:
    bodies = [{"type": "worker", "command": "sleep 60", "cpus": 1, "memory_gb": 1}] * 20
    responses = post_concurrently(api, bodies)
    accepted = {r.json()["job_id"] for r in responses if r.status_code == 201}
    refused = [r for r in responses if r.status_code != 201]
    assert len(accepted) == HOST_CPUS, [r.text for r in responses]
    assert {r.status_code for r in refused} == {429}
    assert {r.json()["error"] for r in refused} == {"insufficient_resources"}
    running = [api.job(job_id) for job_id in accepted]
    assert sum(job["cpus"] for job in running if job["status"] not in ENDED) <= HOST_CPUS
    cancel_all(api, accepted)
    for job_id in accepted:
        assert api.wait_status(job_id, ENDED, 30)["status"] == "cancelled"
    assert_released(api, next(iter(accepted)))


@pytest.fixture(scope="module")
def image_without_work(podman_socket: Path) -> Iterator[str]:
    """The job image with its /work removed (the issue's "image without /work")."""
    image = f"localhost/flashpods-nowork-{INSTANCE}:latest"
    name = f"nowork-{INSTANCE}"
    url = ["podman", "--url", f"unix://{podman_socket}"]
    subprocess.run([*url, "run", "--name", name, "--pull=never", JOB_IMAGE, "rmdir", "/work"],
                   check=True, capture_output=True)  # fmt: skip
    subprocess.run([*url, "commit", "--quiet", name, image], check=True, capture_output=True)
    subprocess.run([*url, "rm", name], check=True, capture_output=True)
    yield image
    subprocess.run([*url, "rmi", "--force", image], check=False, capture_output=True)


def test_an_upload_less_job_gets_an_empty_read_only_work_on_any_image(
    api: Api, image_without_work: str
) -> None:
    job_id = create(
        api, "pwd; ls -A /work | wc -l > /artifacts/n; touch /work/x || exit 7",
        image=image_without_work,
    )  # fmt: skip
    job = api.wait_status(job_id, ENDED, 60)
    assert (job["status"], job["exit_code"]) == ("failed", 7)  # started; /work read-only
    assert api.call("GET", f"/jobs/{job_id}/artifacts/n").text.strip() == "0"
    text = log_text(api, job_id)
    assert "/work" in text and "Read-only file system" in text
    assert_released(api, job_id)


def test_scratch_size_is_the_job_parameter(api: Api) -> None:
    job_id = create(api, "df -k /tmp | tail -1 > /artifacts/df", disk_gb=3)
    assert api.wait_status(job_id, ENDED, 60)["status"] == "completed"
    size_kib = int(api.call("GET", f"/jobs/{job_id}/artifacts/df").text.split()[1])
    assert size_kib * 1024 == 3 * GIB
