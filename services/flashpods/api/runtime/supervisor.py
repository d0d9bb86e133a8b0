"""One thread per job: wait for the container, enforce timeout and cancel, then collect.

The end of a job is always the same sequence, whether the container exited while we
watched or while the API was down: finish the log, hooks.on_copying_artifacts, apply the
artifact rules, hooks.on_finished, and only then remove the container (so a crash before
the final status leaves everything for recovery to redo). An exception anywhere in that
(a bug, a tree the walk did not expect) still ends the job: `failed` with
FINISH_FAILED, and the container is removed; only when the final status itself cannot be
written is the container left for the reconciler.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, TypeVar

from flashpods.api.runtime import (
    ArtifactRecord,
    ContainerInfo,
    JobHooks,
    JobOutcome,
    JobSpec,
    joblog,
)
from flashpods.api.runtime.artifacts_collect import (
    ArtifactCollectionError,
    ArtifactLimits,
    collect_artifacts,
)
from flashpods.api.runtime.diskwatch import DiskWatch
from flashpods.api.runtime.logcapture import LogCapture
from flashpods.api.runtime.oomwatch import OomWatch
from flashpods.api.runtime.podman_spec import scratch_mounts
from flashpods.common.timefmt import utc_now

log = logging.getLogger(__name__)

StopReason = Literal["cancelled", "timed_out"]
TIMEOUT_ERROR = "Job exceeded timeout limit"
FINISH_FAILED = "job_finish_failed"
DISK_FULL_ERROR = "disk_full"
CONTAINER_GONE = "artifact_copy_container_gone"


def scratch_targets(spec: JobSpec) -> list[str]:
    """The job's writable size-limited filesystems (podman_spec.scratch_mounts)."""
    return [mount.target for mount in scratch_mounts(spec) if not mount.read_only]


RETRIES = 5
RETRY_SECONDS = 2.0
T = TypeVar("T")


def decide_outcome(
    *,
    info: ContainerInfo | None,
    oom_killed: bool,
    stop_reason: StopReason | None,
    disk_full: bool = False,
    copy_error: str | None,
    artifacts: tuple[ArtifactRecord, ...],
    ended_at: datetime,
) -> JobOutcome:
    """api.md's table of final states; a cancel wins over everything (never completed)."""
    exit_code = info.exit_code if info else None
    if stop_reason == "cancelled":
        code = 143 if exit_code == 143 else 137
        return JobOutcome("cancelled", code, None, artifacts, ended_at)
    if stop_reason == "timed_out":
        return JobOutcome("timed_out", 137, TIMEOUT_ERROR, artifacts, ended_at)
    if info is None:
        return JobOutcome("failed", None, "container_lost", artifacts, ended_at)
    if copy_error:
        return JobOutcome("failed", exit_code, copy_error, artifacts, ended_at)
    if oom_killed and exit_code != 0:
        return JobOutcome("failed", exit_code, "oom_killed", artifacts, ended_at)
    if disk_full and exit_code != 0:
        # The exit code stays the job's; the error says why it most likely failed.
        return JobOutcome("failed", exit_code, DISK_FULL_ERROR, artifacts, ended_at)
    if exit_code == 0:
        return JobOutcome("completed", 0, None, artifacts, ended_at)
    return JobOutcome("failed", exit_code, None, artifacts, ended_at)


@dataclass
class ContainerOps:
    """What a supervisor needs from podman (PodmanRuntime provides it)."""

    # Blocks until the container (name, PID 1 if known) has ended; podman's view of it
    # then, None if it is gone.
    wait: Callable[[str, int | None], ContainerInfo | None]
    stop: Callable[[str], None]  # SIGTERM, grace, SIGKILL
    inspect: Callable[[str], ContainerInfo | None]  # None: the container is gone
    finalize: Callable[[JobSpec], None]  # remove the container and the job's scratch files
    artifacts: Callable[[JobSpec], int]  # a descriptor of the ended job's /artifacts


class JobSupervisor:
    def __init__(
        self,
        spec: JobSpec,
        hooks: JobHooks,
        ops: ContainerOps,
        capture: LogCapture,
        limits: ArtifactLimits,
        on_done: Callable[[str], None],
    ) -> None:
        self.spec = spec
        self.hooks = hooks
        self.ops = ops
        self.capture = capture
        self.limits = limits
        self.on_done = on_done
        self.name = f"job_{spec.job_id}"
        self._cancel = threading.Event()
        self._wake = threading.Event()
        self._exited = threading.Event()
        self._end_seen: ContainerInfo | None = None  # what the wait saw at the end
        self._abandoned = threading.Event()
        self._thread: threading.Thread | None = None
        self._reported = False  # on_finished succeeded

    def request_cancel(self) -> None:
        self._cancel.set()
        self._wake.set()

    def abandon(self) -> None:
        """The API is shutting down: stop watching and report nothing (the container runs
        on; the next start resumes it)."""
        self._abandoned.set()
        self._wake.set()
        self.capture.abandon()

    def supervise(self, started_at: datetime, pid: int | None, exited: bool = False) -> None:
        """The container is running (or has already ended): watch it in the background."""
        if exited:
            self._exited.set()
        self._thread = threading.Thread(
            target=self._run, args=(started_at, pid), name=f"sup-{self.spec.job_id}", daemon=True
        )
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread:
            self._thread.join(timeout)

    def _run(self, started_at: datetime, pid: int | None) -> None:
        try:
            self._watch_and_finish(started_at, pid)
        except Exception:
            log.exception("supervising %s failed; it ends %s", self.spec.job_id, FINISH_FAILED)
            if not self._abandoned.is_set():
                self._end_failed()
        finally:
            self.capture.abandon()  # a no-op once finished; never left running
            self.on_done(self.spec.job_id)

    def _end_failed(self) -> None:
        """The job's end could not be worked out: report it failed, remove the container
        (whether or not it still runs), so its capacity is released either way."""
        outcome = JobOutcome("failed", None, FINISH_FAILED, (), utc_now())
        try:  # the job log keeps what the job printed, as on a normal end
            self.capture.finish()
        except Exception:
            log.exception("job %s: its log capture did not finish", self.name)
        if not self._reported:
            try:  # one try: the reconciler resumes an exited container whose job is active
                self.hooks.on_finished(self.spec.job_id, outcome)
            except Exception:
                log.exception("job %s: final status not written; the reconciler retries", self.name)
                return
        try:
            self.ops.finalize(self.spec)
        except Exception:
            log.exception("job %s: container not removed; the reconciler removes it", self.name)

    def _wait_exit(self, pid: int | None) -> None:
        self._end_seen = self.ops.wait(self.name, pid)
        self._exited.set()
        self._wake.set()

    def _watch_and_finish(self, started_at: datetime, pid: int | None) -> None:
        self.capture.start()
        oom = OomWatch(pid) if pid else None
        if oom:
            oom.start()
        disk = DiskWatch(pid, scratch_targets(self.spec)) if pid else None
        if disk:
            disk.start()
        threading.Thread(
            target=self._wait_exit, args=(pid,), name=f"wait-{self.spec.job_id}", daemon=True
        ).start()
        deadline = started_at + timedelta(minutes=self.spec.timeout_minutes)
        stop_reason: StopReason | None = None
        while not self._exited.is_set():
            if self._abandoned.is_set():
                break
            if stop_reason is None and self._cancel.is_set():
                stop_reason = "cancelled"
            elif stop_reason is None and utc_now() >= deadline:
                stop_reason = "timed_out"
            if stop_reason is not None:
                self.ops.stop(self.name)  # returns once the container is down
                self._exited.wait(5)
                continue
            remaining = (deadline - utc_now()).total_seconds()
            self._wake.wait(max(0.0, min(remaining, 60.0)))
            self._wake.clear()
        if stop_reason is None and self._cancel.is_set():
            stop_reason = "cancelled"  # DELETE won the race with a natural exit
        if self._abandoned.is_set():
            if oom:
                oom.stop(None)
            if disk:
                disk.stop()
            return
        self._finish(stop_reason, oom, disk)

    def _retry(self, what: str, call: Callable[[], T]) -> T:
        """podman or the database may hiccup; a job's end must not be lost to that."""
        for attempt in range(RETRIES):
            try:
                return call()
            except Exception:
                if attempt == RETRIES - 1:
                    raise
                log.warning("%s for %s failed; retrying", what, self.spec.job_id, exc_info=True)
                self._abandoned.wait(RETRY_SECONDS)
        raise AssertionError("unreachable")

    def _finish(
        self, stop_reason: StopReason | None, oom: OomWatch | None, disk: DiskWatch | None
    ) -> None:
        info = self._end_seen or self._retry("inspect", lambda: self.ops.inspect(self.name))
        oom_seen = oom.stop(info.exit_code if info else None) if oom else False
        filled = disk.stop() if disk else []
        self.capture.finish()
        self._retry(
            "on_copying_artifacts", lambda: self.hooks.on_copying_artifacts(self.spec.job_id)
        )
        for target in filled:
            self._warn(
                f"{target} filled its {self.spec.disk_gb} GB limit: writes failed with ENOSPC"
            )
        copy_error: str | None = None
        records: list[ArtifactRecord] = []
        try:
            records = self._collect()
        except ArtifactCollectionError as exc:
            copy_error = exc.code
            self._warn(f"collecting artifacts failed: {exc}")
        except Exception:
            log.exception("collecting the artifacts of %s failed", self.spec.job_id)
            copy_error = FINISH_FAILED
            self._warn(f"collecting artifacts failed: {FINISH_FAILED}")
        outcome = decide_outcome(
            info=info,
            oom_killed=oom_seen or bool(info and info.oom_killed),
            disk_full=bool(filled),
            stop_reason=stop_reason,
            copy_error=copy_error,
            artifacts=tuple(records),
            ended_at=(info.finished_at if info and info.finished_at else utc_now()),
        )
        self._retry("on_finished", lambda: self.hooks.on_finished(self.spec.job_id, outcome))
        self._reported = True
        self.ops.finalize(self.spec)

    def _collect(self) -> list[ArtifactRecord]:
        try:
            source = self.ops.artifacts(self.spec)
        except OSError as exc:  # the pin is gone: so are the artifacts
            raise ArtifactCollectionError(CONTAINER_GONE, str(exc)) from exc
        try:
            return collect_artifacts(source, self.spec.artifacts_dir, self.limits, self._warn)
        finally:
            os.close(source)

    def _warn(self, text: str) -> None:
        """A warning of the runtime's own in the job log, under the log's size rule."""
        joblog.append_runtime_lines(
            self.spec.log_path, self.capture.limit_bytes, [f"warning: {text}"]
        )
