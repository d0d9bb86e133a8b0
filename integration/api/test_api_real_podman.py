"""The real `flashpods-api` process with real podman: crash recovery, concurrent creates.

The service runs as a subprocess (the crash test kills it with SIGKILL) against the
session's private podman socket and this session's FLASHPODS_INSTANCE.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from flashpods.api.runtime import artifactpin
from flashpods.common.jobstates import WITH_CONTAINER
from flashpods.common.polling import wait_until
from flashpods_testing.localhost import JOB_IMAGE, podman
from podman_support import (
    INSTANCE,
    Api,
    cancel_all,
    container_exists,
    post_concurrently,
    running_api,
)


@pytest.fixture
def api(tmp_path: Path, podman_socket: Path) -> Iterator[Api]:
    with running_api(
        Api, tmp_path, podman_socket, FLASHPODS_HOST_CPUS="4", FLASHPODS_HOST_MEMORY_GB="16"
    ) as process:
        yield process


def test_sigkill_mid_job_then_restart_ends_the_job_right(api: Api) -> None:
    root = api.root / "uploads" / "upload_crash"
    root.mkdir(parents=True)
    (root / "n.txt").write_text("30\n")
    assert api.call("POST", "/uploads/upload_crash/finalize").status_code == 200
    command = (
        'n=$(cat /work/n.txt); i=1; while [ $i -le "$n" ]; do echo "tick $i"; i=$((i+1)); '
        "sleep 0.15; done; mkdir -p /artifacts/out; echo result > /artifacts/out/r.txt; exit 5"
    )
    created = api.call("POST", "/jobs", json={"type": "worker", "command": command,
                                              "files_id": "upload_crash"})  # fmt: skip
    assert created.status_code == 201, created.text
    job_id = created.json()["job_id"]
    api.wait_status(job_id, {"running"}, 20)
    wait_until(
        lambda: "tick 3" in api.call("GET", f"/jobs/{job_id}/output").json()["output"],
        20,
        "some output",
    )
    api.kill()
    # The job keeps printing while nobody watches.
    wait_until(lambda: "tick 10" in podman("logs", f"job_{job_id}").stdout, 20, "unwatched output")
    api.start()
    job = api.wait_status(job_id, {"completed", "failed", "timed_out", "cancelled"}, 40)
    assert (job["status"], job["exit_code"], job["error"]) == ("failed", 5, None)
    output = api.call("GET", f"/jobs/{job_id}/output", params={"tail": 1000}).json()
    lines = [line[15:] for line in output["output"].splitlines()]
    assert lines == [f"tick {i}" for i in range(1, 31)]
    artifacts = api.call("GET", f"/jobs/{job_id}/artifacts").json()
    assert [a["name"] for a in artifacts["artifacts"]] == ["out/r.txt"]
    assert api.call("GET", f"/jobs/{job_id}/artifacts/out/r.txt").content == b"result\n"
    wait_until(lambda: not container_exists(job_id), 15, "container removal")


def test_eight_concurrent_creates_with_one_client_job_id_make_one_job(api: Api) -> None:
    body = {"type": "worker", "command": "sleep 60", "client_job_id": str(uuid.uuid4())}
    responses = post_concurrently(api, [body] * 8)
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 7 + [201], [r.text for r in responses]
    job_ids = {r.json()["job_id"] for r in responses}
    assert len(job_ids) == 1
    listed = api.call("GET", "/jobs", params={"limit": 100}).json()
    assert listed["total"] == 1
    job_id = job_ids.pop()
    assert api.wait_status(job_id, {"running"}, 20)["status"] == "running"
    containers = subprocess.run(
        ["podman", "ps", "-q", "--filter", f"label=flashpods-instance={INSTANCE}",
         "--filter", f"label=flashpods-job-id={job_id}"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert len(containers) == 1
    cancel_all(api, {job_id})
    job = api.job(job_id)
    # init forwards SIGTERM to the shell running sleep: it dies of it.
    assert (job["status"], job["exit_code"]) == ("cancelled", 143)


def test_concurrent_creates_never_overcommit(api: Api) -> None:
    # Host capacity is 4 CPUs: of 8 one-CPU jobs created at once, exactly 4 fit.
    bodies = [{"type": "worker", "command": "sleep 60", "cpus": 1, "memory_gb": 1}] * 8
    responses = post_concurrently(api, bodies)
    accepted = {r.json()["job_id"] for r in responses if r.status_code == 201}
    refused = [r for r in responses if r.status_code != 201]
    assert len(accepted) == 4, [r.text for r in responses]
    assert {r.status_code for r in refused} == {429}
    assert {r.json()["error"] for r in refused} == {"insufficient_resources"}
    active = [api.job(job_id) for job_id in accepted]
    assert sum(job["cpus"] for job in active if job["status"] in WITH_CONTAINER) <= 4
    cancel_all(api, accepted)


def test_orphan_container_of_this_instance_is_removed(api: Api, podman_socket: Path) -> None:
    def run(instance: str) -> str:
        return subprocess.run(
            ["podman", "--url", f"unix://{podman_socket}", "run", "-d", "--pull=never",
             "--label", "flashpods-job=true", "--label", "flashpods-job-id=job_00ff00ff",
             "--label", "flashpods-job-type=worker", "--label", f"flashpods-instance={instance}",
             JOB_IMAGE, "sleep", "300"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip

    def exists(container: str) -> bool:
        return podman("container", "exists", container).returncode == 0

    orphan, foreign = run(INSTANCE), run(f"{INSTANCE}-foreign")
    later = ""
    try:
        # No job row has this ID: the reconciliation loop (every 2 s here) removes it.
        wait_until(lambda: not exists(orphan), 30, "orphan removal")
        # A pass that began after that one removes a second orphan: that pass too saw the
        # other instance's container and left it alone.
        later = run(INSTANCE)
        wait_until(lambda: not exists(later), 30, "the second orphan's removal")
        assert exists(foreign)
    finally:
        podman("rm", "--force", "--ignore", "--time", "0", orphan, foreign, *filter(None, [later]))


def test_podman_failure_body_is_scrubbed_and_the_log_line_keeps_the_path(tmp_path: Path) -> None:
    """Real podman fails with a host path in its words (no service at the socket): the
    client's error has no host path; the API's log line has podman's full message and
    the request id the client got, so one finds the other."""
    socket = tmp_path / "no-podman" / "podman.sock"
    request_id = str(uuid.uuid4())
    with running_api(Api, tmp_path, socket) as api:
        response = api.call(
            "POST",
            "/jobs",
            json={"type": "worker", "command": "true"},
            headers={"X-Request-Id": request_id},
        )
        assert response.status_code == 500, response.text
        assert response.headers["X-Request-Id"] == request_id
        assert response.json()["error"] == "container_error"
        job_id = response.json()["details"]["job_id"]
        assert str(tmp_path) not in response.text
        assert str(tmp_path) not in api.call("GET", f"/jobs/{job_id}").text
        log_text = api.log_path.read_text()
    [line] = [line for line in log_text.splitlines() if f"request {request_id}: " in line]
    assert "container_error: job " + job_id in line
    assert str(socket) in line  # podman's own words: "dial unix <the socket>: connect: ..."


def test_a_followed_log_is_pushed_while_the_job_runs_and_ends_with_it(api: Api) -> None:
    # The job prints, then waits for the test's go-ahead (a file it sees in /artifacts):
    # its first line must reach the follower while it is still running.
    command = (
        "echo first; while [ ! -e /artifacts/go ]; do sleep 0.05; done; echo second >&2; exit 3"
    )
    created = api.call("POST", "/jobs", json={"type": "worker", "command": command})
    assert created.status_code == 201, created.text
    job_id = created.json()["job_id"]
    response = api.call("GET", f"/jobs/{job_id}/output", params={"follow": "true"}, stream=True)
    assert response.status_code == 200
    chunks = response.iter_content(chunk_size=None)
    received = b""
    while b"first" not in received:
        received += next(chunks)
    assert api.job(job_id)["status"] == "running"
    # Written into the job's /artifacts tmpfs through its pin, as the collector reads it.
    pinned = artifactpin.open_pinned(job_id)
    try:
        os.close(os.open("go", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=pinned))
    finally:
        os.close(pinned)
    received += b"".join(chunks)  # ends by itself once the job has ended
    assert api.job(job_id)["status"] == "failed"
    log = (api.root / "logs" / f"{job_id}.log").read_bytes()
    assert received == log
    assert [line[15:] for line in log.decode().splitlines()[:2]] == ["first", "second"]
    final = api.call("GET", f"/jobs/{job_id}/output", params={"follow": "true", "offset": len(log)})
    assert (final.headers["X-Log-Complete"], final.content) == ("true", b"")
