"""Retries observed against the real API answering 429 and 503 for real reasons:
insufficient_resources (the host's 2 CPUs are taken), rate_limited (a 2 requests/s
bucket), and copy_in_progress (503 while the API is still collecting the artifacts of a
job that left thousands of files)."""

from __future__ import annotations

from pathlib import Path

from client_stack import Api
from flashpods.client.errors import FlashpodsError
from flashpods.client.retry import RetryPolicy
from flashpods.client.sdk import Flashpods, RetryEvent
from flashpods.common.polling import wait_until


def _wait_status(client: Flashpods, job_id: str, wanted: str, timeout: float = 60) -> None:
    wait_until(lambda: client.get_job(job_id).status == wanted, timeout, f"{job_id} {wanted}")


def test_insufficient_resources_is_retried_until_capacity_returns(api: Api, rsync_url: str) -> None:
    events: list[RetryEvent] = []
    client = api.client(rsync_url, events)
    # The API says Retry-After: 10; a 3 s cap keeps the test short (the default is 30 s).
    client.retry = RetryPolicy(cap_seconds=3)
    blocker = client.create_worker("sleep 2", cpus=2, memory_gb=1)
    _wait_status(client, blocker.job_id, "running")
    before = client.list_jobs(limit=100).total

    created = client.create_worker("echo admitted", cpus=1, memory_gb=1)

    assert events, "the second job was admitted at once: the host was not full"
    assert {(e.reason, e.status, e.method, e.path) for e in events} == {
        ("insufficient_resources", 429, "POST", "/jobs")
    }
    assert [e.delay for e in events] == [3.0]  # Retry-After (10 s), within the cap
    assert client.get_job(blocker.job_id).ended  # admitted only once the blocker had ended
    assert client.wait(created.job_id).status == "completed"
    assert client.list_jobs(limit=100).total == before + 1  # one job, however many tries


def test_insufficient_resources_is_reported_after_five_tries(api: Api, rsync_url: str) -> None:
    events: list[RetryEvent] = []
    client = api.client(rsync_url, events)
    client.retry = RetryPolicy(base_seconds=0.05, cap_seconds=0.05)
    blocker = client.create_worker("trap 'exit 143' TERM; sleep 30 & wait", cpus=2, memory_gb=1)
    try:
        _wait_status(client, blocker.job_id, "running")
        before = client.list_jobs(limit=100).total
        try:
            client.create_worker("true", cpus=1, memory_gb=1)
        except FlashpodsError as exc:
            assert (exc.code, exc.status) == ("insufficient_resources", 429)
            assert exc.details["available"]["cpus"] == 0
        else:
            raise AssertionError("a job was admitted beyond the host's capacity")
        assert len(events) == 4
        assert client.list_jobs(limit=100).total == before  # nothing was created
    finally:
        client.kill(blocker.job_id)
        # Its CPUs are free once the container has stopped (exit code recorded).
        wait_until(
            lambda: client.get_job(blocker.job_id).exit_code is not None,
            30,
            "the blocker's exit code",
        )


def test_rate_limited_is_retried_after_retry_after(limited_api: Api) -> None:
    events: list[RetryEvent] = []
    client = limited_api.client("rsync://127.0.0.1:1/uploads", events)
    for _ in range(6):
        assert client.list_jobs().total == 0
    assert events and all((e.reason, e.status) == ("rate_limited", 429) for e in events)
    # The API's Retry-After (whole seconds, <= 1 at 2 requests/s) was used, not our backoff.
    assert all(0 < e.delay <= 1 for e in events)


def test_copy_in_progress_503_is_retried_until_the_artifacts_are_ready(
    api: Api, rsync_url: str, tmp_path: Path
) -> None:
    events: list[RetryEvent] = []
    client = api.client(rsync_url, events)
    # 200 files are kept (sorted: a-keep.txt first); the rest are removed one by one
    # with a warning each, which keeps the collection busy for a while.
    command = (
        "echo kept > /artifacts/a-keep.txt; mkdir /artifacts/z; "
        "python3 -c \"import os; [open(f'/artifacts/z/{i:05}', 'w').close() "
        'for i in range(20000)]"'
    )
    job = client.create_worker(command, cpus=1, memory_gb=1)
    events.clear()

    def collecting() -> bool:
        try:
            listing = client.list_artifacts(job.job_id)
        except FlashpodsError as exc:
            assert exc.code == "artifacts_not_available", exc
            return False
        assert listing.copy_in_progress, "the collection ended before it was seen"
        return True

    wait_until(collecting, 120, "the artifact collection", interval=0.02)
    saved = client.download_artifact(job.job_id, "a-keep.txt", tmp_path)
    assert saved.read_text() == "kept\n"
    assert events and {(e.reason, e.status) for e in events} == {("copy_in_progress", 503)}
    final = client.get_job(job.job_id)
    assert final.status == "completed"
    assert len(client.list_artifacts(job.job_id).artifacts) == 200
