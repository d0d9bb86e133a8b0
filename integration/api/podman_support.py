"""Helpers for the real-podman API tests (imported by conftest and the tests)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import requests
from flashpods.api.runtime import JobOutcome, JobSpec, artifactpin
from flashpods.api.runtime.podman import PodmanConfig
from flashpods.common.polling import wait_until
from flashpods_testing.localhost import ApiProcess, local_api, podman

INSTANCE = f"test-{uuid.uuid4().hex[:10]}"


def make_config(socket: Path, **overrides: object) -> PodmanConfig:
    values: dict[str, object] = {
        "socket_path": socket,
        "instance": INSTANCE,
        "pull_policy": "never",
        "spire_socket_dir": Path("/nonexistent/spire"),
        "token_socket": Path("/nonexistent/token.sock"),
    }
    values.update(overrides)
    return PodmanConfig(**values)  # type: ignore[arg-type]


@dataclass
class RecordingHooks:
    """JobHooks that remember every call, in order, thread-safely."""

    events: list[tuple[str, str, object]] = field(default_factory=list)
    outcomes: dict[str, JobOutcome] = field(default_factory=dict)
    outputs: dict[str, int] = field(default_factory=dict)  # on_output calls per job
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def on_running(self, job_id: str, started_at: datetime) -> None:
        with self._cond:
            self.events.append(("running", job_id, started_at))
            self._cond.notify_all()

    def on_output(self, job_id: str) -> None:
        with self._cond:
            self.outputs[job_id] = self.outputs.get(job_id, 0) + 1
            self._cond.notify_all()

    def on_copying_artifacts(self, job_id: str) -> None:
        with self._cond:
            self.events.append(("copying", job_id, None))
            self._cond.notify_all()

    def on_finished(self, job_id: str, outcome: JobOutcome) -> None:
        with self._cond:
            self.events.append(("finished", job_id, outcome))
            self.outcomes[job_id] = outcome
            self._cond.notify_all()

    def wait(self, job_id: str, timeout: float = 60) -> JobOutcome:
        with self._cond:
            if not self._cond.wait_for(lambda: job_id in self.outcomes, timeout):
                raise AssertionError(f"{job_id} did not finish within {timeout} s")
            return self.outcomes[job_id]

    def kinds(self, job_id: str) -> list[str]:
        with self._cond:
            return [kind for kind, jid, _ in self.events if jid == job_id]


def new_job_id() -> str:
    return f"job_{uuid.uuid4().hex[:16]}"


def container_exists(job_id: str) -> bool:
    return podman("container", "exists", f"job_{job_id}").returncode == 0


def unpinned(job_id: str) -> bool:
    """The job's pin is released (the first step of its end after the outcome)."""
    return not artifactpin.holders(job_id)


def log_lines(spec: JobSpec) -> list[str]:
    return spec.log_path.read_text(errors="replace").splitlines()


def strip_prefix(line: str) -> str:
    return line[15:] if line.startswith("[") and line[13:15] == "] " else line


TOKEN = "b" * 64


class Api(ApiProcess):
    """The API process plus authenticated calls and job polling."""

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {TOKEN}", **kwargs.pop("headers", {})}
        return requests.request(method, self.url + path, headers=headers, timeout=30, **kwargs)

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.call("GET", f"/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def wait_status(self, job_id: str, statuses: set[str], timeout: float) -> dict[str, Any]:
        wait_until(
            lambda: self.job(job_id)["status"] in statuses,
            timeout,
            f"{job_id} to reach {sorted(statuses)}",
            interval=0.2,
        )
        return self.job(job_id)


A = TypeVar("A", bound=Api)

# The hostile suites' host: 2 CPUs of capacity, like the issue's measurements.
HOSTILE_CPUS = 2
HOSTILE_HOST = {"FLASHPODS_HOST_CPUS": str(HOSTILE_CPUS), "FLASHPODS_HOST_MEMORY_GB": "16"}


@contextmanager
def running_api(cls: type[A], root: Path, podman_socket: Path, **overrides: str) -> Iterator[A]:
    """`flashpods-api` on this session's podman socket and instance, everything under
    `root`, rate limit off, reconciling every 2 s; `overrides` (FLASHPODS_*) win."""
    settings = {
        "FLASHPODS_RATE_LIMIT_PER_SECOND": "0",
        "FLASHPODS_RECONCILE_INTERVAL_SECONDS": "2",
        **overrides,
    }
    with local_api(cls, root, podman_socket, INSTANCE, TOKEN, **settings) as process:
        yield process


def post_concurrently(api: Api, bodies: list[dict[str, Any]]) -> list[requests.Response]:
    results: list[requests.Response | None] = [None] * len(bodies)
    barrier = threading.Barrier(len(bodies))

    def post(index: int) -> None:
        barrier.wait()
        results[index] = api.call("POST", "/jobs", json=bodies[index])

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert all(r is not None for r in results)
    return [r for r in results if r is not None]


def cancel_all(api: Api, job_ids: set[str]) -> None:
    for job_id in job_ids:
        assert api.call("DELETE", f"/jobs/{job_id}").status_code == 200
    for job_id in job_ids:
        wait_until(lambda j=job_id: not container_exists(j), 30, f"{job_id} removal")
