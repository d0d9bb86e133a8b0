"""Helpers for the real-podman API tests (imported by conftest and the tests)."""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from flashpods.api.runtime import JobOutcome, JobSpec
from flashpods.api.runtime.podman import PodmanConfig
from flashpods_testing.localhost import podman

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
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def on_running(self, job_id: str, started_at: datetime) -> None:
        with self._cond:
            self.events.append(("running", job_id, started_at))
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


def log_lines(spec: JobSpec) -> list[str]:
    return spec.log_path.read_text(errors="replace").splitlines()


def strip_prefix(line: str) -> str:
    return line[15:] if line.startswith("[") and line[13:15] == "] " else line
