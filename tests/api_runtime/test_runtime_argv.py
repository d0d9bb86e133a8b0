"""The podman argv of a job container (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest
from flashpods.api.config import ModelService
from flashpods.api.runtime import JobSpec
from flashpods.api.runtime import podman_cli as cli

RAW = Path("/logs/.job_1.ctr.log")
GATE = Path("/logs/.job_1.gate")


def spec(**overrides: object) -> JobSpec:
    values: dict[str, object] = {
        "job_id": "job_1",
        "job_type": "worker",
        "image": "localhost/flashpods-job:latest",
        "cpus": 2,
        "memory_gb": 4,
        "timeout_minutes": 30,
        "artifacts_dir": Path("/a/job_1"),
        "log_path": Path("/logs/job_1.log"),
        "command": "echo hi; rm -rf / # $(whoami) 'quoted'",
    }
    values.update(overrides)
    return JobSpec(**values)  # type: ignore[arg-type]


def args_for(job: JobSpec, rootless: bool = True, pull: str = "never") -> list[str]:
    return cli.create_args(
        job,
        instance="inst",
        user=cli.ContainerUser(rootless=rootless, uid=1000, gid=100),
        mounts=[m for m in [cli.upload_mount(job)] if m is not None],
        pull_policy=pull,
        raw_log_path=RAW,
        raw_log_max_bytes=1 << 20,
        gate=GATE,
    )


def pairs(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, item in enumerate(args) if item == flag]


def test_worker_command_goes_by_name_never_by_value() -> None:
    """Not in podman's argv, not in the container shell's: `ps` on the host shows neither."""
    job = spec()
    args = args_for(job)
    assert args[0] == "create"
    assert args[-4:] == [
        "localhost/flashpods-job:latest",
        "/bin/sh",
        "-c",
        'read _ < /run/flashpods/gate && eval "$FLASHPODS_COMMAND"',
    ]
    assert pairs(args, "-e") == ["FLASHPODS_COMMAND"]
    assert not any("rm -rf" in a for a in args)
    assert cli.job_environment(job, "claude", ModelService()) == {
        "FLASHPODS_COMMAND": "echo hi; rm -rf / # $(whoami) 'quoted'"
    }


def test_labels_limits_and_hardening() -> None:
    args = args_for(spec())
    assert pairs(args, "--name") == ["job_job_1"]
    assert pairs(args, "--label") == [
        "flashpods-job=true",
        "flashpods-job-id=job_1",
        "flashpods-job-type=worker",
        "flashpods-instance=inst",
    ]
    assert pairs(args, "--cpus") == ["2"]
    assert pairs(args, "--memory") == ["4g"]
    assert pairs(args, "--security-opt") == ["no-new-privileges"]
    assert pairs(args, "--cap-drop") == ["ALL"]
    assert "--pull=never" in args
    assert "--init" in args
    assert pairs(args, "--log-driver") == ["k8s-file"]
    assert pairs(args, "--log-opt") == [f"path={RAW}", f"max-size={1 << 20}"]
    # Nothing of the host's is writable to the job; the gate is a FIFO it only reads.
    assert pairs(args, "-v") == [f"{GATE}:/run/flashpods/gate:ro"]


def test_rootless_keeps_id_and_rootful_runs_as_the_api_user() -> None:
    rootless = args_for(spec(), rootless=True)
    assert "--userns=keep-id" in rootless and "--user" not in rootless
    rootful = args_for(spec(), rootless=False)
    assert pairs(rootful, "--user") == ["1000:100"]
    assert not any(a.startswith("--userns") for a in rootful)


def test_agent_texts_go_by_name_never_by_value() -> None:
    job = spec(job_type="agent", command=None, task="secret plan", context="c", git_branch="b")
    args = args_for(job)
    assert args[-5:] == [
        "localhost/flashpods-job:latest",
        "/bin/sh",
        "-c",
        'read _ < /run/flashpods/gate && exec "$0"',
        cli.AGENT_ENTRYPOINT,
    ]
    assert pairs(args, "-e") == [
        "FLASHPODS_TASK",
        "FLASHPODS_CONTEXT",
        "FLASHPODS_GIT_BRANCH",
        "FLASHPODS_JOB_ID",
        "FLASHPODS_AGENT_COMMAND",
        "FLASHPODS_MODEL_BASE_URL",
        "FLASHPODS_MODEL_MAX_RETRIES",
        "FLASHPODS_MODEL_TIMEOUT_MS",
    ]
    assert not any("secret plan" in a for a in args)
    model = ModelService("http://198.51.100.2:8001", max_retries=1, timeout_ms=5000)
    env = cli.job_environment(job, "claude", model)
    assert env["FLASHPODS_TASK"] == "secret plan"
    assert env["FLASHPODS_AGENT_COMMAND"] == "claude"
    assert env["FLASHPODS_MODEL_BASE_URL"] == "http://198.51.100.2:8001"
    assert (env["FLASHPODS_MODEL_MAX_RETRIES"], env["FLASHPODS_MODEL_TIMEOUT_MS"]) == ("1", "5000")
    # Unset: empty values, so the CLI keeps its own defaults.
    assert cli.job_environment(job, "claude", ModelService())["FLASHPODS_MODEL_BASE_URL"] == ""
    assert pairs(args, "--label")[2] == "flashpods-job-type=agent"


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError):
        args_for(spec(), pull="sometimes")
    with pytest.raises(ValueError):
        args_for(spec(command=None))


def test_mount_modes() -> None:
    assert cli.Mount(Path("/s/u"), "/work", read_only=True).volume_arg() == "/s/u:/work:ro"


def test_list_filters_on_this_instance() -> None:
    assert cli.job_labels("inst") == {"flashpods-job": "true", "flashpods-instance": "inst"}


def test_scrub_paths_hides_host_paths_but_keeps_image_names() -> None:
    text = 'Error: statfs /var/lib/flashpods/x: no such file; image "localhost/img:1" unknown'
    assert cli.scrub_paths(text) == (
        'Error: statfs <path>: no such file; image "localhost/img:1" unknown'
    )


def mounts_of(args: list[str]) -> list[str]:
    return pairs(args, "--mount")


def test_the_root_is_read_only_and_scratch_is_a_sized_tmpfs() -> None:
    args = args_for(spec(disk_gb=3))
    assert "--read-only" in args and "--read-only-tmpfs=false" in args
    assert pairs(args, "--pids-limit") == [str(cli.PIDS_LIMIT)]
    size = 3 << 30
    assert mounts_of(args) == [
        f"type=tmpfs,destination=/tmp,tmpfs-size={size},tmpfs-mode=1777",
        f"type=tmpfs,destination=/artifacts,tmpfs-size={size},tmpfs-mode=0755,chown=true",
        f"type=tmpfs,destination=/work,tmpfs-size={size},tmpfs-mode=0755,ro=true",
    ]


def agent(**overrides: object) -> JobSpec:
    return spec(job_type="agent", command=None, task="t", git_branch="b", **overrides)


def test_without_an_upload_an_agent_gets_an_empty_writable_work() -> None:
    args = args_for(agent(disk_gb=1))
    assert mounts_of(args)[2] == (
        f"type=tmpfs,destination=/work,tmpfs-size={1 << 30},tmpfs-mode=0755,chown=true"
    )
    assert pairs(args, "-v") == [f"{GATE}:/run/flashpods/gate:ro"]


def test_with_an_upload_a_worker_reads_it_at_work() -> None:
    args = args_for(spec(upload_dir=Path("/snap/u1")))
    assert [m for m in mounts_of(args) if "destination=/work" in m] == []
    assert pairs(args, "-v") == ["/snap/u1:/work:ro", f"{GATE}:/run/flashpods/gate:ro"]


def test_with_an_upload_an_agent_writes_a_private_copy_never_the_upload() -> None:
    args = args_for(agent(upload_dir=Path("/snap/u1"), disk_gb=2))
    assert pairs(args, "-v") == [
        f"/snap/u1:{cli.UPLOAD_TARGET}:ro",
        f"{GATE}:/run/flashpods/gate:ro",
    ]
    assert f"type=tmpfs,destination=/work,tmpfs-size={2 << 30},tmpfs-mode=0755,chown=true" in (
        mounts_of(args)
    )


def test_without_a_gate_the_command_starts_at_once() -> None:
    worker = cli.create_args(
        spec(),
        instance="inst",
        user=cli.ContainerUser(rootless=True, uid=1000, gid=100),
        mounts=[],
        pull_policy="never",
        raw_log_path=RAW,
        raw_log_max_bytes=1 << 20,
    )
    assert worker[-3:] == list(cli.WORKER_SHELL)
    assert pairs(worker, "-v") == []
    assert cli.entry_argv(spec(job_type="agent", command=None), gated=False) == [
        cli.AGENT_ENTRYPOINT
    ]
