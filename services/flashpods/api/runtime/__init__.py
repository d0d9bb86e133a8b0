"""The boundary between the API service and the container runtime.

The service (HTTP, SQLite, uploads, admission, recovery decisions) talks to containers
only through `Runtime`; the runtime never touches the database. It reports what
happens through `JobHooks`, which the service implements and persists. Unit tests
use a fake `Runtime`; `runtime/podman.py` is the real one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal, Protocol

from flashpods.common.limits import LIMITS

JobType = Literal["worker", "agent"]
FinalStatus = Literal["completed", "failed", "timed_out", "cancelled"]

# The one line appended when a log reaches its size limit (api.md "Logs"), after the
# `[HH:MM:SS.mmm] ` prefix. A log whose last line ends with this is truncated.
LOG_TRUNCATED_MARKER = "[TRUNCATED - log exceeded {limit} limit]"
# The line that ends capture when podman's raw log can no longer be read (not a size
# limit). Never longer than LOG_TRUNCATED_MARKER, so the marker room covers it too.
LOG_UNREADABLE_MARKER = "[TRUNCATED - output unreadable]"


@dataclass(frozen=True)
class JobSpec:
    """Everything needed to run (or resume) one job's container."""

    job_id: str
    job_type: JobType
    image: str
    cpus: int
    memory_gb: int
    timeout_minutes: int
    artifacts_dir: Path  # host directory for this job, mounted at /artifacts
    log_path: Path  # host log file, /var/log/flashpods/{job_id}.log
    # Size of each scratch tmpfs of the job (/tmp; /work when there is no upload).
    disk_gb: int = LIMITS["worker"].default_disk_gb
    upload_dir: Path | None = None  # finalized snapshot mounted at /work (ro worker, rw agent)
    command: str | None = None  # worker
    task: str | None = None  # agent
    context: str | None = None  # agent
    git_branch: str | None = None  # agent


@dataclass(frozen=True)
class ArtifactRecord:
    name: str  # path relative to the job's artifacts dir, "/"-separated
    size_bytes: int
    created_at: datetime


@dataclass(frozen=True)
class JobOutcome:
    status: FinalStatus
    exit_code: int | None
    error: str | None
    artifacts: tuple[ArtifactRecord, ...]
    ended_at: datetime


@dataclass(frozen=True)
class ContainerInfo:
    """A job container as podman sees it."""

    container_id: str
    job_id: str  # from the flashpods-job-id label
    state: str  # podman's state: created, running, exited, stopped, ...
    exit_code: int | None
    oom_killed: bool
    started_at: datetime | None
    finished_at: datetime | None


class JobHooks(Protocol):
    """Called by the runtime from its own threads; implementations must be thread-safe."""

    def on_running(self, job_id: str, started_at: datetime) -> None:
        """The container reached `running` (the upload is consumed now)."""

    def on_output(self, job_id: str) -> None:
        """New bytes are in the job's log (wakes whoever follows it; must be cheap)."""

    def on_copying_artifacts(self, job_id: str) -> None:
        """The container ended; artifacts are being copied (copy_in_progress)."""

    def on_finished(self, job_id: str, outcome: JobOutcome) -> None:
        """Final status; artifacts are already in place when this is called."""


class Runtime(Protocol):
    def start(self, spec: JobSpec, hooks: JobHooks) -> None:
        """Create and start the container, then supervise it in the background (log
        capture, timeout, OOM, artifacts). Raises RuntimeError-derived ContainerError
        if the container could not be created or started; never blocks on the job."""

    def cancel(self, job_id: str) -> None:
        """SIGTERM to PID 1, 10 s grace, SIGKILL. The outcome arrives via on_finished
        with status `cancelled`. A no-op for a job the runtime does not know."""

    def resume(self, spec: JobSpec, hooks: JobHooks, info: ContainerInfo) -> None:
        """After an API restart: supervise a container that is still running (resume
        log capture and the timeout from info.started_at), or, if it has exited,
        collect its exit code and artifacts and report on_finished."""

    def list_job_containers(self) -> list[ContainerInfo]:
        """All containers carrying this instance's flashpods labels."""

    def remove_container(self, container_id: str) -> None:
        """Kill and remove (orphans, and cleanup after a job ended)."""


class ContainerError(RuntimeError):
    """podman failed. str() is safe to show (no host paths); `cause` keeps podman's
    full words, paths included, for the service's own log."""

    def __init__(self, message: str, cause: str | None = None) -> None:
        super().__init__(message)
        self.cause = cause or message
