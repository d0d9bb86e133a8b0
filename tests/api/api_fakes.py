"""A fake Runtime for the API's unit tests: containers are dictionary entries, and the
test drives them (run, exit, OOM, time out) and sees what the service persisted."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime

from flashpods.api.runtime import (
    ArtifactRecord,
    ContainerError,
    ContainerInfo,
    JobHooks,
    JobOutcome,
    JobSpec,
)
from flashpods.common.timefmt import log_prefix


@dataclass
class FakeContainer:
    spec: JobSpec
    hooks: JobHooks
    state: str = "created"
    exit_code: int | None = None
    started_at: datetime | None = None


@dataclass
class FakeRuntime:
    containers: dict[str, FakeContainer] = field(default_factory=dict)
    fail_start: str | None = None  # message of the ContainerError start() raises
    fail_cause: str | None = None  # and its cause (podman's full words)
    fail_list: bool = False
    started: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    foreign: list[ContainerInfo] = field(default_factory=list)  # containers without a job
    auto_run: bool = False  # report on_running as soon as start() returns
    # When set: start() waits for it before the container exists (a slow create), and
    # cancel() waits for it before the container has stopped (a job trapping SIGTERM).
    start_gate: threading.Event | None = None
    stop_gate: threading.Event | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, spec: JobSpec, hooks: JobHooks) -> None:
        if self.start_gate is not None:
            self.start_gate.wait(30)
        if self.fail_start is not None:
            raise ContainerError(self.fail_start, self.fail_cause)
        with self.lock:
            self.containers[spec.job_id] = FakeContainer(spec, hooks)
            self.started.append(spec.job_id)
        spec.log_path.write_text(f"{log_prefix(datetime.now(UTC))}container created\n")
        if self.auto_run:
            self.run(spec.job_id)

    def run(self, job_id: str) -> None:
        container = self.containers[job_id]
        container.state = "running"
        container.started_at = datetime.now(UTC)
        container.hooks.on_running(job_id, container.started_at)

    def log(self, job_id: str, *lines: str) -> None:
        """As the real log capture: lines appended, then on_output."""
        container = self.containers[job_id]
        with open(container.spec.log_path, "a") as handle:
            for line in lines:
                handle.write(f"{log_prefix(datetime.now(UTC))}{line}\n")
        container.hooks.on_output(job_id)

    def finish(
        self,
        job_id: str,
        exit_code: int | None = 0,
        status: str | None = None,
        error: str | None = None,
        artifacts: dict[str, bytes] | None = None,
    ) -> None:
        container = self.containers[job_id]
        container.hooks.on_copying_artifacts(job_id)
        records = []
        for name, data in (artifacts or {}).items():
            path = container.spec.artifacts_dir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            records.append(ArtifactRecord(name, len(data), datetime.now(UTC)))
        final = status or ("completed" if exit_code == 0 else "failed")
        container.state = "exited"
        container.exit_code = exit_code
        container.hooks.on_finished(
            job_id,
            JobOutcome(final, exit_code, error, tuple(records), datetime.now(UTC)),  # type: ignore[arg-type]
        )
        with self.lock:
            self.containers.pop(job_id, None)

    def cancel(self, job_id: str) -> None:
        self.cancelled.append(job_id)
        if self.stop_gate is not None:
            self.stop_gate.wait(30)
        if job_id in self.containers:
            self.finish(job_id, 143, status="cancelled")

    def resume(self, spec: JobSpec, hooks: JobHooks, info: ContainerInfo) -> None:
        self.resumed.append(spec.job_id)
        with self.lock:
            self.containers[spec.job_id] = FakeContainer(
                spec, hooks, state=info.state, exit_code=info.exit_code, started_at=info.started_at
            )
        if info.state == "exited":
            self.finish(spec.job_id, info.exit_code)

    def list_job_containers(self) -> list[ContainerInfo]:
        if self.fail_list:
            raise ContainerError("podman is not answering")
        with self.lock:
            return [
                ContainerInfo(
                    container_id=f"c{job_id}",
                    job_id=job_id,
                    state=c.state,
                    exit_code=c.exit_code,
                    oom_killed=False,
                    started_at=c.started_at,
                    finished_at=None,
                )
                for job_id, c in self.containers.items()
            ] + list(self.foreign)

    def remove_container(self, container_id: str) -> None:
        self.removed.append(container_id)
        with self.lock:
            self.foreign = [c for c in self.foreign if c.container_id != container_id]
            self.containers = {k: c for k, c in self.containers.items() if f"c{k}" != container_id}
