"""PodmanRuntime: timeout, cancel, OOM, log truncation, resume after an API crash, agents.

The timeout job (timeout_minutes=1, the smallest the API allows) is started by a module
fixture before the other tests and checked last, so its minute overlaps with them.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flashpods.api.runtime import JobSpec, artifactpin
from flashpods.api.runtime.joblog import format_size
from flashpods.api.runtime.podman import PodmanRuntime, raw_log_path
from flashpods.common.polling import wait_until
from flashpods_testing.localhost import JOB_IMAGE, PodmanService
from podman_support import (
    RecordingHooks,
    container_exists,
    log_lines,
    make_config,
    new_job_id,
    strip_prefix,
)


@pytest.fixture(scope="module")
def timeout_job(
    podman_socket: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[JobSpec, RecordingHooks]]:
    root = tmp_path_factory.mktemp("timeout")
    runtime = PodmanRuntime(make_config(podman_socket))
    hooks = RecordingHooks()
    job_id = new_job_id()
    spec = JobSpec(
        job_id=job_id,
        job_type="worker",
        image=JOB_IMAGE,
        cpus=1,
        memory_gb=1,
        timeout_minutes=1,
        artifacts_dir=root / "artifacts" / job_id,
        log_path=root / f"{job_id}.log",
        command="echo started; echo partial > /artifacts/partial.txt; sleep 600",
    )
    runtime.start(spec, hooks)
    yield spec, hooks
    runtime.shutdown()


@pytest.fixture(autouse=True)
def _start_timeout_job_first(timeout_job: tuple[JobSpec, RecordingHooks]) -> None:
    """Every test of the module depends on it, so it starts before the first one."""


def test_cancel_ends_cancelled_within_15_seconds(runtime: PodmanRuntime, hooks, make_spec) -> None:
    # PID 1 is podman's init, which forwards SIGTERM to the shell: it dies of it (143).
    spec = make_spec("echo running; sleep 300")
    runtime.start(spec, hooks)
    wait_until(lambda: spec.log_path.read_text().strip() != "", 10, "first log line")
    asked = time.monotonic()
    runtime.cancel(spec.job_id)
    outcome = hooks.wait(spec.job_id, 15)
    assert time.monotonic() - asked < 15
    assert (outcome.status, outcome.exit_code) == ("cancelled", 143)
    wait_until(lambda: not container_exists(spec.job_id), 10, "container removal")


def test_cancel_of_a_job_ignoring_sigterm_kills_it(
    runtime: PodmanRuntime, hooks, make_spec
) -> None:
    spec = make_spec("trap '' TERM; echo stubborn; while :; do sleep 1; done")
    runtime.start(spec, hooks)
    wait_until(lambda: "stubborn" in spec.log_path.read_text(), 10, "first log line")
    runtime.cancel(spec.job_id)
    outcome = hooks.wait(spec.job_id, 20)  # 10 s grace, then SIGKILL
    assert (outcome.status, outcome.exit_code) == ("cancelled", 137)


def test_memory_limit_exceeded_is_oom_killed(runtime: PodmanRuntime, hooks, make_spec) -> None:
    spec = make_spec(
        "echo allocating; exec python3 -c 'x = bytearray(b\"a\") * (1536 << 20); print(len(x))'",
        memory_gb=1,
    )
    runtime.start(spec, hooks)
    outcome = hooks.wait(spec.job_id, 60)
    assert (outcome.status, outcome.exit_code, outcome.error) == ("failed", 137, "oom_killed")


def test_log_truncates_at_the_limit_and_the_job_goes_on(
    podman_socket: Path, hooks, make_spec
) -> None:
    limit = 64 << 10
    runtime = PodmanRuntime(make_config(podman_socket, log_max_bytes=limit))
    spec = make_spec(
        "i=0; while [ $i -lt 5000 ]; do echo line $i padding-padding-padding; i=$((i+1)); done; "
        "sleep 1; echo still-alive > /artifacts/after.txt; echo not captured"
    )
    try:
        runtime.start(spec, hooks)
        outcome = hooks.wait(spec.job_id, 60)
    finally:
        runtime.shutdown()
    assert outcome.status == "completed"
    assert [a.name for a in outcome.artifacts] == ["after.txt"]
    assert (spec.artifacts_dir / "after.txt").read_text() == "still-alive\n"
    data = spec.log_path.read_bytes()
    lines = data.decode().splitlines()
    marker = f"[TRUNCATED - log exceeded {format_size(limit)} limit]"
    assert strip_prefix(lines[-1]) == marker
    assert sum(1 for line in lines if "TRUNCATED" in line) == 1
    assert len(data) <= limit  # the marker included
    assert strip_prefix(lines[0]) == "line 0 padding-padding-padding"
    assert "not captured" not in data.decode()


def test_resume_after_crash_keeps_the_log_exact(podman_socket: Path, hooks, make_spec) -> None:
    script = (
        "i=0; while [ $i -lt 30 ]; do echo tick $i; i=$((i+1)); sleep 0.1; done; "
        "echo done > /artifacts/done.txt; exit 4"
    )
    spec = make_spec(script)
    first = PodmanRuntime(make_config(podman_socket))
    first.start(spec, hooks)
    wait_until(lambda: "tick 5" in spec.log_path.read_text(), 10, "some ticks")
    first.shutdown()  # the API dies: nobody watches the container any more
    # A crash can leave a torn last line; the resumed capture must repair it.
    with spec.log_path.open("ab") as fh:
        fh.write(b"[00:00:00.000] tick 9")
    # The job prints on while nobody watches (conmon's own file has what the capture missed).
    wait_until(lambda: b"tick 15" in raw_log_path(spec).read_bytes(), 10, "unwatched ticks")
    second = PodmanRuntime(make_config(podman_socket))
    info = next(i for i in second.list_job_containers() if i.job_id == spec.job_id)
    second.resume(spec, hooks, info)
    outcome = hooks.wait(spec.job_id, 30)
    second.shutdown()
    assert (outcome.status, outcome.exit_code) == ("failed", 4)
    assert [a.name for a in outcome.artifacts] == ["done.txt"]
    assert [strip_prefix(line) for line in log_lines(spec)] == [f"tick {i}" for i in range(30)]


class _Crash(BaseException):
    """The API dies (not an error the runtime handles)."""


class _DiesBeforeTheGate(PodmanRuntime):
    def _pin_and_open_gate(self, spec: JobSpec, name: str, **_: object) -> None:  # type: ignore[override]
        raise _Crash


def test_a_job_whose_api_died_before_its_gate_opened_waits_and_resume_lets_it_go(
    podman_socket: Path, hooks, make_spec
) -> None:
    spec = make_spec("echo ran > /artifacts/ran.txt; echo ran")
    first = _DiesBeforeTheGate(make_config(podman_socket))
    with pytest.raises(_Crash):
        first.start(spec, hooks)
    first.shutdown()
    second = PodmanRuntime(make_config(podman_socket))
    info = next(i for i in second.list_job_containers() if i.job_id == spec.job_id)
    assert info.state == "running"  # its command is still waiting on the gate
    assert spec.log_path.read_text() == ""
    assert not artifactpin.holders(spec.job_id)
    second.resume(spec, hooks, info)
    outcome = hooks.wait(spec.job_id, 30)
    second.shutdown()
    assert (outcome.status, outcome.exit_code) == ("completed", 0)
    assert [a.name for a in outcome.artifacts] == ["ran.txt"]
    assert (spec.artifacts_dir / "ran.txt").read_text() == "ran\n"


def test_resume_of_an_exited_container_collects_it(podman_socket: Path, hooks, make_spec) -> None:
    spec = make_spec("sleep 1; echo one; echo two > /artifacts/two.txt")
    first = PodmanRuntime(make_config(podman_socket))
    first.start(spec, hooks)
    first.shutdown()  # the API dies before the job ends
    wait_until(
        lambda: (
            any(
                i.state == "exited"
                for i in PodmanRuntime(make_config(podman_socket)).list_job_containers()
                if i.job_id == spec.job_id
            )
            or spec.job_id in hooks.outcomes
        ),
        10,
        "the job to exit",
    )
    if spec.job_id in hooks.outcomes:
        pytest.fail("the abandoned supervisor still reported the job")
    second = PodmanRuntime(make_config(podman_socket))
    info = next(i for i in second.list_job_containers() if i.job_id == spec.job_id)
    second.resume(spec, hooks, info)
    outcome = hooks.wait(spec.job_id, 30)
    second.shutdown()
    assert (outcome.status, outcome.exit_code) == ("completed", 0)
    assert [strip_prefix(line) for line in log_lines(spec)] == ["one"]
    assert [a.name for a in outcome.artifacts] == ["two.txt"]
    wait_until(lambda: not container_exists(spec.job_id), 10, "container removal")


def test_agent_gets_its_environment_and_a_writable_work(
    podman_socket: Path, hooks, make_spec, dirs
) -> None:
    tools = dirs.root / "tools"
    (tools / "bin").mkdir(parents=True)
    entrypoint = tools / "bin" / "flashpods-agent-entrypoint"
    entrypoint.write_text(
        "#!/bin/sh\n"
        'printf "%s" "$FLASHPODS_TASK" > /artifacts/task.txt\n'
        'printf "%s|%s|%s|%s" "$FLASHPODS_CONTEXT" "$FLASHPODS_GIT_BRANCH" '
        '"$FLASHPODS_JOB_ID" "$FLASHPODS_AGENT_COMMAND" > /artifacts/env.txt\n'
        # /work is the job's own copy (the real entrypoint makes it; here by hand)...
        "cp -a /run/flashpods/upload/. /work/ && echo edited > /work/edited.txt || exit 8\n"
        # ... a tmpfs of disk_gb, while the upload itself is read-only.
        "df -k /work | tail -1 | awk '{print $2}' > /artifacts/work_kib\n"
        "touch /run/flashpods/upload/x 2>/dev/null && exit 9\n"
        "exit 0\n"
    )
    entrypoint.chmod(0o755)
    upload = dirs.uploads / "upload_agent"
    upload.mkdir()
    (upload / "main.py").write_text("print(1)\n")
    runtime = PodmanRuntime(make_config(podman_socket, tools_dir=tools, agent_command="fake"))
    task = "Fix the bug.\nIt's in `main.py`; don't $(rm -rf /) \"quote\""
    spec = make_spec(
        job_type="agent", task=task, context="ctx", git_branch="fix/bug", upload_dir=upload
    )
    try:
        runtime.start(spec, hooks)
        outcome = hooks.wait(spec.job_id, 30)
    finally:
        runtime.shutdown()
    assert outcome.status == "completed", spec.log_path.read_text()
    assert (spec.artifacts_dir / "task.txt").read_text() == task
    assert (spec.artifacts_dir / "env.txt").read_text() == f"ctx|fix/bug|{spec.job_id}|fake"
    assert int((spec.artifacts_dir / "work_kib").read_text()) == spec.disk_gb << 20
    assert sorted(p.name for p in upload.iterdir()) == ["main.py"]  # never written


def test_timeout_after_one_minute(timeout_job: tuple[JobSpec, RecordingHooks]) -> None:
    spec, hooks = timeout_job
    outcome = hooks.wait(spec.job_id, 100)
    assert (outcome.status, outcome.exit_code, outcome.error) == (
        "timed_out",
        137,
        "Job exceeded timeout limit",
    )
    assert [a.name for a in outcome.artifacts] == ["partial.txt"]
    assert strip_prefix(log_lines(spec)[0]) == "started"
    started = next(event[2] for event in hooks.events if event[0] == "running")
    assert 60 <= (outcome.ended_at - started).total_seconds() < 75


def test_podman_service_restart_mid_job_is_survived(tmp_path: Path, hooks, make_spec) -> None:
    service = PodmanService(tmp_path)
    runtime = PodmanRuntime(make_config(service.start()))
    # The job goes on only once the test says so (a file in its /artifacts), so it runs
    # across the whole outage; its end is then seen through the restarted service.
    spec = make_spec(
        "echo before; while [ ! -e /artifacts/go ]; do sleep 0.05; done; "
        "echo after > /artifacts/after.txt; echo after"
    )
    try:
        runtime.start(spec, hooks)
        wait_until(lambda: "before" in spec.log_path.read_text(), 10, "first line")
        service.kill()  # the socket service dies; conmon keeps the container running
        service.start()  # same socket path, the stale socket file removed first
        assert spec.job_id not in hooks.outcomes
        pinned = artifactpin.open_pinned(spec.job_id)
        try:
            os.close(os.open("go", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=pinned))
        finally:
            os.close(pinned)
        outcome = hooks.wait(spec.job_id, 40)
        # The end goes on after the outcome (the container's removal needs the service).
        wait_until(lambda: not container_exists(spec.job_id), 30, "the container's removal")
    finally:
        runtime.shutdown()
        service.stop()
    assert (outcome.status, outcome.exit_code) == ("completed", 0)
    assert [strip_prefix(line) for line in log_lines(spec)] == ["before", "after"]
    assert sorted(a.name for a in outcome.artifacts) == ["after.txt", "go"]


def test_shutdown_leaves_no_exit_waiter_behind(tmp_path: Path, hooks, make_spec) -> None:
    # After shutdown the job is the next start's to resume: nothing of this runtime may
    # keep polling podman (or spawning podman clients) once its service is gone.
    service = PodmanService(tmp_path)
    runtime = PodmanRuntime(make_config(service.start()))
    spec = make_spec("sleep 60")
    waiter = f"wait-{spec.job_id}"
    try:
        runtime.start(spec, hooks)
        wait_until(
            lambda: any(thread.name == waiter for thread in threading.enumerate()),
            15,
            "the job to be supervised",
        )
        runtime.shutdown()
        service.kill()  # the blocked `podman wait` now fails; the waiter must not retry
        wait_until(
            lambda: all(thread.name != waiter for thread in threading.enumerate()),
            10,
            "the exit waiter to stop",
        )
    finally:
        service.stop()
        subprocess.run(["podman", "rm", "--force", "--time", "0", f"job_{spec.job_id}"],
                       capture_output=True, check=False)  # fmt: skip
        artifactpin.release(spec.job_id)  # what the next start's recovery would do
    assert spec.job_id not in hooks.outcomes  # abandoned, not reported
