"""PodmanRuntime against real podman: exit codes, logs, mounts, artifacts, start errors."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import uuid
from pathlib import Path

import pytest
from flashpods.api.runtime import ContainerError, artifactpin
from flashpods.api.runtime import podman as podman_module
from flashpods.api.runtime.podman import PodmanRuntime, gate_path, raw_log_path
from flashpods.common.polling import wait_until
from flashpods.deployment import JOB_IMAGE
from flashpods_testing.localhost import podman
from podman_support import INSTANCE, container_exists, log_lines, strip_prefix

PREFIX = re.compile(r"^\[\d\d:\d\d:\d\d\.\d{3}\] ")


def test_exit_zero_completes_and_cleans_up(runtime: PodmanRuntime, hooks, make_spec) -> None:
    spec = make_spec("echo hello")
    runtime.start(spec, hooks)
    outcome = hooks.wait(spec.job_id)
    assert (outcome.status, outcome.exit_code, outcome.error) == ("completed", 0, None)
    assert hooks.kinds(spec.job_id) == ["running", "copying", "finished"]
    assert [strip_prefix(line) for line in log_lines(spec)] == ["hello"]
    # The container and conmon's raw file go right after the final status is out.
    wait_until(
        lambda: not container_exists(spec.job_id) and not raw_log_path(spec).exists(),
        10,
        "container and raw log removal",
    )


def test_nonzero_exit_fails_with_its_code(runtime: PodmanRuntime, hooks, make_spec) -> None:
    spec = make_spec("echo about to fail >&2; exit 3")
    runtime.start(spec, hooks)
    outcome = hooks.wait(spec.job_id)
    assert (outcome.status, outcome.exit_code, outcome.error) == ("failed", 3, None)
    assert [strip_prefix(line) for line in log_lines(spec)] == ["about to fail"]


def test_the_end_is_seen_without_a_pidfd(
    runtime: PodmanRuntime, hooks, make_spec, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_pidfd(pid: int) -> int:
        raise OSError(errno.ENOSYS, "pidfd_open not here")

    monkeypatch.setattr(podman_module.os, "pidfd_open", no_pidfd)
    spec = make_spec("echo last words; exit 3")
    runtime.start(spec, hooks)
    outcome = hooks.wait(spec.job_id)  # podman's own wait, then inspect
    assert (outcome.status, outcome.exit_code) == ("failed", 3)
    assert [strip_prefix(line) for line in log_lines(spec)] == ["last words"]


def test_a_pid_that_is_not_the_containers_is_not_waited_on(
    runtime: PodmanRuntime, hooks, make_spec, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Were the container's PID 1 number reused before its pidfd is opened, podman no
    # longer says it runs as that pid: the end is then seen from podman alone.
    stranger = subprocess.Popen(["sleep", "300"])
    try:
        real = PodmanRuntime._pin_and_open_gate

        def started(self: PodmanRuntime, *args: object, **kwargs: object) -> object:
            info, _ = real(self, *args, **kwargs)  # type: ignore[arg-type]
            return info, stranger.pid

        monkeypatch.setattr(PodmanRuntime, "_pin_and_open_gate", started)
        spec = make_spec("sleep 1; exit 4")
        runtime.start(spec, hooks)
        outcome = hooks.wait(spec.job_id, 30)
        assert (outcome.status, outcome.exit_code) == ("failed", 4)
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_stdout_and_stderr_interleave_with_timestamps(
    runtime: PodmanRuntime, hooks, make_spec
) -> None:
    script = (
        "echo out1; echo err1 >&2; sleep 0.2; echo out2; echo err2 >&2; sleep 0.2; "
        "printf 'no newline at the end'"
    )
    spec = make_spec(script)
    runtime.start(spec, hooks)
    assert hooks.wait(spec.job_id).status == "completed"
    lines = log_lines(spec)
    assert all(PREFIX.match(line) for line in lines), lines
    assert [strip_prefix(line) for line in lines] == [
        "out1",
        "err1",
        "out2",
        "err2",
        "no newline at the end",
    ]
    stamps = [line[1:13] for line in lines]
    assert stamps == sorted(stamps)


def test_user_text_is_one_argv_item_never_a_host_shell(
    runtime: PodmanRuntime, hooks, make_spec, tmp_path: Path
) -> None:
    marker = tmp_path / "host-shell-ran"
    # Would create the marker if any shell on the host interpreted the text.
    spec = make_spec(f"echo '$(touch {marker})' \"; touch {marker}\"")
    runtime.start(spec, hooks)
    assert hooks.wait(spec.job_id).status == "completed"
    assert not marker.exists()
    assert strip_prefix(log_lines(spec)[0]) == f"$(touch {marker}) ; touch {marker}"


def _cmdlines_with(marker: bytes) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:  # gone meanwhile
                continue
            if marker in cmdline:
                found.append(f"{entry.name}: {cmdline!r}")
    return found


def test_worker_command_is_in_no_host_process_argv(
    runtime: PodmanRuntime, hooks, make_spec
) -> None:
    """`ps` on the host shows neither podman's argv nor the job shell's with the command."""
    marker = f"secret-{uuid.uuid4().hex}"
    spec = make_spec(f"echo started; sleep 30 # {marker}")
    runtime.start(spec, hooks)
    try:
        wait_until(lambda: "started" in "".join(log_lines(spec)), 30, "the job's first line")
        assert _cmdlines_with(marker.encode()) == []
    finally:
        runtime.cancel(spec.job_id)
    assert hooks.wait(spec.job_id, 30).status == "cancelled"


def test_worker_work_is_read_only_and_the_container_is_locked_down(
    runtime: PodmanRuntime, hooks, make_spec, dirs
) -> None:
    upload = dirs.uploads / "upload_ro"
    upload.mkdir()
    (upload / "input.txt").write_text("from the laptop\n")
    script = (
        "cat /work/input.txt; "
        "if touch /work/new 2>/dev/null; then echo WRITABLE; else echo read-only; fi; "
        "grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; id -u; "
        "echo result > /artifacts/result.txt"
    )
    spec = make_spec(script, upload_dir=upload)
    runtime.start(spec, hooks)
    outcome = hooks.wait(spec.job_id)
    assert outcome.status == "completed"
    text = [strip_prefix(line) for line in log_lines(spec)]
    assert text[:2] == ["from the laptop", "read-only"]
    assert "CapEff:\t0000000000000000" in text
    assert "NoNewPrivs:\t1" in text
    assert text[-1] == str(os.getuid())
    assert sorted(upload.iterdir()) == [upload / "input.txt"]
    assert [a.name for a in outcome.artifacts] == ["result.txt"]


def test_container_carries_the_conventions(runtime: PodmanRuntime, hooks, make_spec) -> None:
    spec = make_spec("sleep 30", cpus=2, memory_gb=3)
    runtime.start(spec, hooks)
    try:
        fmt = (
            '{{.Name}}|{{index .Config.Labels "flashpods-job"}}|'
            '{{index .Config.Labels "flashpods-job-id"}}|'
            '{{index .Config.Labels "flashpods-job-type"}}|'
            '{{index .Config.Labels "flashpods-instance"}}|'
            "{{.HostConfig.Memory}}|{{.HostConfig.NanoCpus}}|{{.HostConfig.CapDrop}}|"
            "{{.HostConfig.SecurityOpt}}"
        )
        out = podman("inspect", "--format", fmt, f"job_{spec.job_id}").stdout.strip()
        name, job, job_id, job_type, instance, memory, cpus, capdrop, secopt = out.split("|")
        assert name == f"job_{spec.job_id}"
        assert (job, job_id, job_type, instance) == ("true", spec.job_id, "worker", INSTANCE)
        assert int(memory) == 3 << 30
        assert int(cpus) == 2_000_000_000
        assert "CAP_SETUID" in capdrop and "CAP_DAC_OVERRIDE" in capdrop  # every default cap
        assert "no-new-privileges" in secopt
        listed = {info.job_id: info for info in runtime.list_job_containers()}
        assert listed[spec.job_id].state == "running"
    finally:
        runtime.cancel(spec.job_id)
    assert hooks.wait(spec.job_id, 30).status == "cancelled"


def test_missing_image_raises_and_leaves_nothing(runtime: PodmanRuntime, hooks, make_spec) -> None:
    spec = make_spec("true", image="localhost/does-not-exist:latest")
    with pytest.raises(ContainerError) as raised:
        runtime.start(spec, hooks)
    assert "/" not in str(raised.value).replace("localhost/does-not-exist", "")
    assert hooks.events == []
    assert not container_exists(spec.job_id)
    assert not raw_log_path(spec).exists()
    assert "[flashpods]" in spec.log_path.read_text()
    runtime.cancel(spec.job_id)  # unknown to the runtime now: a no-op


def test_a_command_that_never_reads_its_gate_fails_to_start_and_leaves_nothing(
    runtime: PodmanRuntime, hooks, make_spec, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An entry that ignores the gate (as an image's own entrypoint might): the start
    # gives up after GATE_SECONDS instead of waiting forever.
    monkeypatch.setattr(podman_module, "GATE_SECONDS", 1.0)
    monkeypatch.setattr(
        podman_module.ctr, "entry_argv", lambda spec, gated: ["/bin/sh", "-c", "sleep 60"]
    )
    spec = make_spec("true")
    with pytest.raises(ContainerError) as raised:
        runtime.start(spec, hooks)
    assert str(raised.value) == "the job's command did not start"
    assert hooks.events == []
    assert not container_exists(spec.job_id)
    assert not artifactpin.holders(spec.job_id)
    assert not raw_log_path(spec).exists() and not gate_path(spec).exists()
    assert "the job's command did not start" in spec.log_path.read_text()


def test_bad_command_fails_at_start(runtime: PodmanRuntime, hooks, make_spec) -> None:
    spec = make_spec("exec /nonexistent/binary")
    runtime.start(spec, hooks)
    outcome = hooks.wait(spec.job_id)
    assert outcome.status == "failed"
    assert outcome.exit_code == 127


def test_orphan_container_is_listed_and_removed(runtime: PodmanRuntime, podman_socket) -> None:
    other = f"{INSTANCE}-other"
    created = []
    for inst in (INSTANCE, other):
        result = subprocess.run(
            [
                "podman", "--url", f"unix://{podman_socket}", "run", "-d", "--pull=never",
                "--label", "flashpods-job=true", "--label", "flashpods-job-id=job_orphan",
                "--label", "flashpods-job-type=worker", "--label", f"flashpods-instance={inst}",
                JOB_IMAGE, "sleep", "300",
            ],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        created.append(result.stdout.strip())
    try:
        listed = [info for info in runtime.list_job_containers() if info.job_id == "job_orphan"]
        assert [info.container_id for info in listed] == [created[0]]
        assert listed[0].state == "running"
        runtime.remove_container(created[0])
        assert podman("container", "exists", created[0]).returncode == 1
        assert podman("container", "exists", created[1]).returncode == 0
        runtime.remove_container(created[0])  # idempotent
    finally:
        podman("rm", "--force", "--ignore", "--time", "0", *created)


def test_artifacts_subdirectories_and_symlinks(runtime: PodmanRuntime, hooks, make_spec) -> None:
    script = (
        "mkdir -p /artifacts/reports/daily && echo r1 > /artifacts/reports/daily/r1.txt; "
        "echo main > /artifacts/main.txt; echo h > /artifacts/.hidden; "
        "ln -s /etc/passwd /artifacts/escape; ln -s ../../../etc/hostname /artifacts/reports/up; "
        "ln -s /artifacts/main.txt /artifacts/reports/alias.txt; "
        "echo 'trailing' > '/artifacts/bad name '; echo done"
    )
    spec = make_spec(script)
    runtime.start(spec, hooks)
    outcome = hooks.wait(spec.job_id)
    assert outcome.status == "completed"
    sizes = {a.name: a.size_bytes for a in outcome.artifacts}
    assert sizes == {
        ".hidden": 2,
        "main.txt": 5,
        "reports/alias.txt": 5,
        "reports/daily/r1.txt": 3,
    }
    root = spec.artifacts_dir
    on_disk = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert on_disk == sorted(sizes)
    assert not any(p.is_symlink() for p in root.rglob("*"))
    assert (root / "reports" / "alias.txt").read_text() == "main\n"
    text = spec.log_path.read_text()
    assert "done" in text
    assert "'escape' skipped: symlink dangles, loops or resolves outside /artifacts" in text
    assert "'reports/up' skipped" in text
    assert "'bad name ' skipped: name has leading or trailing whitespace" in text
    assert "'.hidden' has a leading '.' (kept)" in text
