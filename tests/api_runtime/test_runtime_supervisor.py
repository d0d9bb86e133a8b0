"""JobSupervisor with fake podman operations: cancel, timeout, retries, abandon."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flashpods.api.runtime import ContainerInfo, JobOutcome, JobSpec, artifactpin
from flashpods.api.runtime import supervisor as sup_module
from flashpods.api.runtime.artifacts_collect import ArtifactLimits
from flashpods.api.runtime.logcapture import LogCapture
from flashpods.api.runtime.supervisor import ContainerOps, JobSupervisor
from flashpods_testing.leftover_processes import names_a_path_under, processes


@pytest.fixture(autouse=True)
def no_capture_left_running(tmp_path: Path) -> Iterator[None]:
    """Whatever way the job ended, its log capture process has ended with the supervisor."""
    yield
    assert [p.describe() for p in processes() if names_a_path_under(p, tmp_path)] == []


class FakePodman:
    def __init__(self, exit_code: int = 0, wait_sees_the_end: bool = False) -> None:
        self.exit_code = exit_code
        self.exited = threading.Event()
        self.wait_sees_the_end = wait_sees_the_end
        self.stops = 0
        self.inspects = 0
        self.finalized: list[str] = []
        self.pinned: Path | None = None  # the job's /artifacts; None: its pin is gone

    def wait(self, name: str, pid: int | None) -> ContainerInfo | None:
        self.exited.wait(30)
        if self.wait_sees_the_end:
            return ContainerInfo("c", "job_1", "stopped", self.exit_code, False, None, None)
        return None  # nothing seen (as if gone): the supervisor asks inspect

    def stop(self, name: str) -> None:
        self.stops += 1
        self.exit_code = 143
        self.exited.set()

    def inspect(self, name: str) -> ContainerInfo | None:
        self.inspects += 1
        now = datetime.now(UTC)
        state = "exited" if self.exited.is_set() else "running"
        return ContainerInfo("c", "job_1", state, self.exit_code, False, now, now)

    def artifacts(self, spec: JobSpec) -> int:
        if self.pinned is None:
            raise artifactpin.PinError("no pin holds the artifacts of job job_1")
        return os.open(self.pinned, os.O_PATH | os.O_DIRECTORY)

    def ops(self) -> ContainerOps:
        return ContainerOps(
            self.wait,
            self.stop,
            self.inspect,
            lambda s: self.finalized.append(s.job_id),
            self.artifacts,
        )


class Hooks:
    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.outcome: JobOutcome | None = None
        self.done = threading.Event()
        self.calls: list[str] = []

    def on_running(self, job_id: str, started_at: datetime) -> None:
        self.calls.append("running")

    def on_output(self, job_id: str) -> None:
        pass

    def on_copying_artifacts(self, job_id: str) -> None:
        self.calls.append("copying")

    def on_finished(self, job_id: str, outcome: JobOutcome) -> None:
        self.calls.append("finished")
        if self.failures:
            self.failures -= 1
            raise RuntimeError("database is locked")
        self.outcome = outcome
        self.done.set()


def make(
    tmp_path: Path, podman: FakePodman, hooks: Hooks, timeout_minutes: int = 5
) -> JobSupervisor:
    spec = JobSpec(
        "job_1",
        "worker",
        "img",
        1,
        1,
        timeout_minutes,
        tmp_path / "a",
        tmp_path / "job_1.log",
        command="x",
    )
    spec.artifacts_dir.mkdir()
    if podman.pinned is None:
        podman.pinned = tmp_path / "pinned"
        podman.pinned.mkdir()
    capture = LogCapture(tmp_path / ".job_1.ctr.log", spec.log_path, 1 << 20)
    return JobSupervisor(spec, hooks, podman.ops(), capture, ArtifactLimits(), lambda _: None)


def test_natural_exit_reports_then_finalizes(tmp_path: Path) -> None:
    podman, hooks = FakePodman(exit_code=0), Hooks()
    sup = make(tmp_path, podman, hooks)
    sup.supervise(datetime.now(UTC), None)
    podman.exited.set()
    assert hooks.done.wait(10)
    sup.join(10)
    assert hooks.outcome is not None and hooks.outcome.status == "completed"
    assert hooks.calls == ["copying", "finished"]
    assert podman.finalized == ["job_1"] and podman.stops == 0


def test_the_end_the_wait_saw_is_not_asked_again(tmp_path: Path) -> None:
    podman, hooks = FakePodman(exit_code=3, wait_sees_the_end=True), Hooks()
    sup = make(tmp_path, podman, hooks)
    sup.supervise(datetime.now(UTC), None)
    podman.exited.set()
    assert hooks.done.wait(10)
    sup.join(10)
    assert hooks.outcome is not None
    assert (hooks.outcome.status, hooks.outcome.exit_code) == ("failed", 3)
    assert podman.inspects == 0


def test_cancel_stops_the_container(tmp_path: Path) -> None:
    podman, hooks = FakePodman(), Hooks()
    sup = make(tmp_path, podman, hooks)
    sup.supervise(datetime.now(UTC), None)
    sup.request_cancel()
    assert hooks.done.wait(10)
    assert hooks.outcome is not None
    assert (hooks.outcome.status, hooks.outcome.exit_code) == ("cancelled", 143)
    assert podman.stops == 1


def test_deadline_passed_while_the_api_was_down_times_out_at_once(tmp_path: Path) -> None:
    podman, hooks = FakePodman(), Hooks()
    sup = make(tmp_path, podman, hooks, timeout_minutes=1)
    sup.supervise(datetime.now(UTC) - timedelta(minutes=2), None)
    assert hooks.done.wait(10)
    assert hooks.outcome is not None
    assert (hooks.outcome.status, hooks.outcome.exit_code) == ("timed_out", 137)


def test_a_failing_hook_is_retried_before_the_container_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sup_module, "RETRY_SECONDS", 0.01)
    podman, hooks = FakePodman(), Hooks(failures=2)
    sup = make(tmp_path, podman, hooks)
    sup.supervise(datetime.now(UTC), None)
    podman.exited.set()
    assert hooks.done.wait(10)
    sup.join(10)
    assert hooks.calls == ["copying", "finished", "finished", "finished"]
    assert podman.finalized == ["job_1"]


def test_a_hook_that_keeps_failing_leaves_the_container_for_recovery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sup_module, "RETRY_SECONDS", 0.01)
    podman, hooks = FakePodman(), Hooks(failures=100)
    sup = make(tmp_path, podman, hooks)
    sup.supervise(datetime.now(UTC), None)
    podman.exited.set()
    sup.join(10)
    # The outcome RETRIES times, then once more as job_finish_failed.
    assert hooks.calls.count("finished") == sup_module.RETRIES + 1
    assert podman.finalized == []


def test_abandon_reports_nothing(tmp_path: Path) -> None:
    podman, hooks = FakePodman(), Hooks()
    sup = make(tmp_path, podman, hooks)
    sup.supervise(datetime.now(UTC), None)
    sup.abandon()
    podman.exited.set()
    sup.join(10)
    assert hooks.calls == [] and podman.finalized == []


def test_what_the_job_left_in_its_pinned_artifacts_is_copied_out(tmp_path: Path) -> None:
    podman, hooks = FakePodman(exit_code=0), Hooks()
    sup = make(tmp_path, podman, hooks)
    assert podman.pinned is not None
    (podman.pinned / "out.txt").write_text("result")
    sup.supervise(datetime.now(UTC), None)
    podman.exited.set()
    assert hooks.done.wait(10)
    sup.join(10)
    assert hooks.outcome is not None and hooks.outcome.status == "completed"
    assert [a.name for a in hooks.outcome.artifacts] == ["out.txt"]
    assert (tmp_path / "a" / "out.txt").read_text() == "result"


def test_artifacts_whose_pin_is_gone_end_the_job_failed_and_release_it(tmp_path: Path) -> None:
    podman, hooks = FakePodman(exit_code=0), Hooks()
    sup = make(tmp_path, podman, hooks)
    podman.pinned = None  # e.g. its holder was killed while the API was down
    sup.supervise(datetime.now(UTC), None)
    podman.exited.set()
    assert hooks.done.wait(10)
    sup.join(10)
    assert hooks.outcome is not None
    assert (hooks.outcome.status, hooks.outcome.error) == ("failed", "artifact_copy_container_gone")
    assert hooks.outcome.exit_code == 0
    assert podman.finalized == ["job_1"]
    assert list((tmp_path / "a").iterdir()) == []


def test_a_walk_that_breaks_unexpectedly_ends_the_job_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object, **__: object) -> list[object]:
        raise RecursionError("maximum recursion depth exceeded")  # what the old walk hit

    monkeypatch.setattr(sup_module, "collect_artifacts", broken)
    podman, hooks = FakePodman(exit_code=0), Hooks()
    sup = make(tmp_path, podman, hooks)
    sup.supervise(datetime.now(UTC), None)
    podman.exited.set()
    assert hooks.done.wait(10)
    sup.join(10)
    assert hooks.outcome is not None
    assert (hooks.outcome.status, hooks.outcome.error) == ("failed", sup_module.FINISH_FAILED)
    assert hooks.outcome.exit_code == 0  # what the job itself did is kept
    assert podman.finalized == ["job_1"]
    assert "collecting artifacts failed: job_finish_failed" in (tmp_path / "job_1.log").read_text()


def test_an_unexpected_error_anywhere_in_the_end_still_ends_the_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sup_module, "RETRY_SECONDS", 0.01)
    podman, hooks = FakePodman(exit_code=0), Hooks()

    def inspect_fails(name: str) -> ContainerInfo | None:
        raise ValueError("podman answered something unexpected")

    ops = podman.ops()
    ops.inspect = inspect_fails
    sup = make(tmp_path, podman, hooks)
    sup.ops = ops
    (tmp_path / ".job_1.ctr.log").write_text(f"{datetime.now(UTC).isoformat()} stdout P last\n")
    sup.supervise(datetime.now(UTC), None)
    podman.exited.set()
    assert hooks.done.wait(10)
    sup.join(10)
    assert hooks.outcome is not None
    assert (hooks.outcome.status, hooks.outcome.error) == ("failed", sup_module.FINISH_FAILED)
    assert podman.finalized == ["job_1"]  # capacity released: the container goes
    assert (tmp_path / "job_1.log").read_text().endswith("] last\n")  # its log was finished
