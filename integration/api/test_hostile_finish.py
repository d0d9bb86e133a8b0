"""Hostile jobs against the real API on real podman: whatever a job leaves in /artifacts
or does to its container, it ends, its capacity comes back and its container goes.

Each job asks for every CPU of the host (FLASHPODS_HOST_CPUS=2), so the follow-up job
that asks for them too is admitted only once the hostile one released them. Every case
also checks that nothing outside the job's own directories changed. Run with `-s` to
see the table the lead's note takes (case, final status, seconds, capacity released).
"""

from __future__ import annotations

import os
import stat
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from flashpods.common.jobstates import ENDED
from flashpods.common.polling import wait_until
from podman_support import HOSTILE_CPUS, HOSTILE_HOST, Api, container_exists, running_api

pytestmark = [pytest.mark.podman, pytest.mark.slow]

HOST_CPUS = HOSTILE_CPUS
FINAL = set(ENDED)
TABLE: list[str] = []


class HostileApi(Api):
    """The API process, plus what the hostile cases ask of it."""

    def create(self, command: str) -> str:
        body = {"type": "worker", "command": command, "cpus": HOST_CPUS, "memory_gb": 1}
        response = self.call("POST", "/jobs", json=body)
        assert response.status_code == 201, response.text
        return str(response.json()["job_id"])

    def log(self, job_id: str) -> str:
        return str(
            self.call("GET", f"/jobs/{job_id}/output", params={"tail": 10000}).json()["output"]
        )

    def artifact_names(self, job_id: str) -> list[str]:
        listing = self.call("GET", f"/jobs/{job_id}/artifacts").json()
        return [item["name"] for item in listing["artifacts"]]


@pytest.fixture
def api(tmp_path: Path, podman_socket: Path) -> Iterator[HostileApi]:
    with running_api(HostileApi, tmp_path, podman_socket, **HOSTILE_HOST) as process:
        yield process


@pytest.fixture(scope="module", autouse=True)
def table() -> Iterator[None]:
    yield
    print("\n| case | final status | error | s from create to final | s from container end to "
          "final (≤) | capacity released |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for row in TABLE:
        print(row)


def host_state(api: HostileApi, job_id: str) -> dict[str, tuple[int, int, int]]:
    """Mode, size and mtime of everything the API keeps outside this job's own
    directories, plus the host paths a link could point at."""
    state = {}
    own = {api.root / "artifacts" / job_id, api.root / "logs", api.root / "db"}
    for base, dirs, files in os.walk(api.root):
        dirs[:] = [d for d in dirs if Path(base, d) not in own]
        for name in files:
            path = Path(base, name)
            if path.name in ("api.log",):
                continue
            info = path.lstat()
            state[str(path)] = (info.st_mode, info.st_size, int(info.st_mtime))
    for path in ("/", "/etc", "/etc/passwd", "/tmp"):
        info = os.lstat(path)
        state[path] = (info.st_mode, 0, 0)
    return state


def finish(api: HostileApi, case: str, command: str, *, expect: tuple[str, str | None],
           timeout: float = 120) -> tuple[str, dict[str, Any]]:  # fmt: skip
    """Run the hostile job to its end and check what every case must hold."""
    begun = time.monotonic()
    job_id = api.create(command)
    before = host_state(api, job_id)
    job = api.wait_status(job_id, FINAL, timeout)
    seconds = time.monotonic() - begun
    finishing = time.time() - job_end(job)
    assert (job["status"], job["error"]) == expect, job
    released = released_capacity(api)
    wait_until(lambda: not container_exists(job_id), 30, f"removal of {job_id}'s container")
    assert host_state(api, job_id) == before
    TABLE.append(f"| {case} | {job['status']} | {job['error']} | {seconds:.1f} | "
                 f"{finishing:.1f} | {'y' if released else 'n'} |")  # fmt: skip
    return job_id, job


def job_end(job: dict[str, Any]) -> float:
    """The container's end (completed_at) as epoch seconds."""
    return datetime.fromisoformat(job["completed_at"].replace("Z", "+00:00")).timestamp()


def released_capacity(api: HostileApi) -> bool:
    """A job needing every CPU of the host is admitted (and runs to its end)."""
    follow_up = api.call(
        "POST", "/jobs", json={"type": "worker", "command": "true", "cpus": HOST_CPUS}
    )
    assert follow_up.status_code == 201, follow_up.text
    job = api.wait_status(follow_up.json()["job_id"], FINAL, 60)
    assert job["status"] == "completed", job
    return True


def test_a_700_deep_folder(api: HostileApi) -> None:
    command = (
        "echo ok > /artifacts/top.txt; d=/artifacts; for i in $(seq 700); do d=$d/x; done; "
        "mkdir -p $d; echo hi > $d/f"
    )
    job_id, _ = finish(api, "700-deep folder", command, expect=("completed", None))
    assert api.artifact_names(job_id) == ["top.txt"]
    assert "deeper than 32 directory levels" in api.log(job_id)


def test_a_name_that_is_not_utf8(api: HostileApi) -> None:
    command = (
        "echo ok > /artifacts/good.txt; python3 -c \"open(b'/artifacts/bad\\xff', 'w').write('x')\""
    )
    job_id, _ = finish(api, "non-UTF-8 name", command, expect=("completed", None))
    assert api.artifact_names(job_id) == ["good.txt"]
    assert "'bad\\udcff' skipped: name is not valid UTF-8" in api.log(job_id)


def test_200000_files(api: HostileApi) -> None:
    command = (
        "python3 -c \"import os; os.mkdir('/artifacts/many'); "
        "[open('/artifacts/many/f%06d' % i, 'w').close() for i in range(200000)]\""
    )
    job_id, _ = finish(api, "200,000 files", command, expect=("completed", None), timeout=300)
    names = api.artifact_names(job_id)
    assert names == [f"many/f{i:06}" for i in range(200)]
    assert len(os.listdir(api.root / "artifacts" / job_id / "many")) == 200
    log = api.log(job_id)
    assert "more artifact warnings not shown" in log
    assert log.count("warning:") == 51


def test_a_fifo_and_a_socket(api: HostileApi) -> None:
    command = (
        'mkfifo /artifacts/fifo; echo ok > /artifacts/ok.txt; python3 -c "import socket; '
        "socket.socket(socket.AF_UNIX).bind('/artifacts/sock')\""
    )
    job_id, _ = finish(api, "FIFO and socket", command, expect=("completed", None))
    assert api.artifact_names(job_id) == ["ok.txt"]
    assert sorted(os.listdir(api.root / "artifacts" / job_id)) == ["ok.txt"]


def test_symlink_loops_and_a_link_to_the_root(api: HostileApi) -> None:
    command = (
        "cd /artifacts; ln -s / root; ln -s a b; ln -s b a; ln -s . self; "
        "ln -s self/self/self/keep.txt alias; ln -s root/etc/passwd passwd; "
        "echo keep > keep.txt"
    )
    job_id, _ = finish(api, "symlink loops, link to /", command, expect=("completed", None))
    # A link that resolves inside /artifacts (through `self` -> `.`, still there when
    # `alias` is seen: sorted order) is kept as a plain file; the others go.
    assert api.artifact_names(job_id) == ["alias", "keep.txt"]
    directory = api.root / "artifacts" / job_id
    assert sorted(os.listdir(directory)) == ["alias", "keep.txt"]
    assert not (directory / "alias").is_symlink()
    assert (directory / "alias").read_text() == "keep\n"


def test_chmod_000_on_artifacts(api: HostileApi) -> None:
    command = "echo r > /artifacts/r.txt; chmod 000 /artifacts/r.txt /artifacts"
    job_id, _ = finish(api, "chmod 000 /artifacts", command, expect=("completed", None))
    assert api.artifact_names(job_id) == ["r.txt"]
    directory = api.root / "artifacts" / job_id
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert api.call("GET", f"/jobs/{job_id}/artifacts/r.txt").content == b"r\n"


def test_container_removed_behind_the_apis_back(api: HostileApi) -> None:
    begun = time.monotonic()
    job_id = api.create("sleep 600")
    api.wait_status(job_id, {"running"}, 30)
    before = host_state(api, job_id)
    subprocess.run(["podman", "rm", "--force", "--time", "0", f"job_{job_id}"], check=True,
                   capture_output=True)  # fmt: skip
    job = api.wait_status(job_id, FINAL, 60)
    seconds = time.monotonic() - begun
    assert job["status"] == "failed"
    # `rm --force` kills the container, then removes it: the supervisor sees either the
    # kill (its PID 1 ended by SIGKILL) or, if podman removed it first, the loss.
    assert (job["exit_code"], job["error"]) in (
        (137, None),
        (None, "container_lost"),
        (None, "container_lost_on_recovery"),
    )
    assert released_capacity(api)
    assert not container_exists(job_id)
    assert host_state(api, job_id) == before
    TABLE.append(f"| podman rm -f while running | failed | {job['error']} | {seconds:.1f} | "
                 f"- | y |")  # fmt: skip


def test_exited_while_the_api_was_down_with_a_hostile_tree(api: HostileApi) -> None:
    command = (
        "sleep 2; d=/artifacts; for i in $(seq 700); do d=$d/x; done; mkdir -p $d; "
        "python3 -c \"open(b'/artifacts/bad\\xff', 'w')\"; echo r > /artifacts/r.txt; exit 7"
    )
    job_id = api.create(command)
    api.wait_status(job_id, {"running"}, 30)
    before = host_state(api, job_id)
    api.kill()
    subprocess.run(["podman", "wait", f"job_{job_id}"], check=True, capture_output=True)
    restarted = time.monotonic()
    api.start()  # the same database: recovery collects the exited container
    job = api.wait_status(job_id, FINAL, 60)
    seconds = time.monotonic() - restarted
    assert (job["status"], job["exit_code"], job["error"]) == ("failed", 7, None)
    assert api.artifact_names(job_id) == ["r.txt"]
    assert released_capacity(api)
    wait_until(lambda: not container_exists(job_id), 30, f"removal of {job_id}'s container")
    assert host_state(api, job_id) == before
    TABLE.append(f"| exited while the API was down (700-deep + non-UTF-8) | failed (exit 7) | "
                 f"None | - | {seconds:.1f} after the restart | y |")  # fmt: skip
