"""The SpecGenerator body of a job container (pure)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flashpods.api.config import ModelService
from flashpods.api.runtime import JobSpec
from flashpods.api.runtime import podman_spec as ctr

RAW = Path("/logs/.job_1.ctr.log")
GATE = Path("/logs/.job_1.gate")
GATE_MOUNT = {
    "destination": "/run/flashpods/gate",
    "type": "bind",
    "source": str(GATE),
    "options": ["ro"],
}


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


def body_for(
    job: JobSpec, rootless: bool = True, gate: Path | None = GATE, **options: Any
) -> dict[str, Any]:
    return ctr.container_spec(
        job,
        instance="inst",
        user=ctr.ContainerUser(rootless=rootless, uid=1000, gid=100),
        mounts=[m for m in [ctr.upload_mount(job)] if m is not None],
        raw_log_path=RAW,
        raw_log_max_bytes=1 << 20,
        environment=ctr.job_environment(job, "claude", ModelService()),
        gate=gate,
        **options,
    )


def binds(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in body["mounts"] if m["type"] == "bind"]


def tmpfs(body: dict[str, Any]) -> dict[str, list[str]]:
    return {m["destination"]: m["options"] for m in body["mounts"] if m["type"] == "tmpfs"}


def test_worker_command_is_a_value_in_env_and_only_the_shell_reads_it() -> None:
    """The command is in the body's env (sent over the socket, in no argv); the
    container's own argv only names the variable: `ps` shows it nowhere."""
    job = spec()
    body = body_for(job)
    assert body["image"] == "localhost/flashpods-job:latest"
    assert body["command"] == [
        "/bin/sh",
        "-c",
        'read _ < /run/flashpods/gate && eval "$FLASHPODS_COMMAND"',
    ]
    assert body["env"] == {"FLASHPODS_COMMAND": "echo hi; rm -rf / # $(whoami) 'quoted'"}
    assert not any("rm -rf" in a for a in body["command"])
    assert body["work_dir"] == "/work"


def test_labels_limits_and_hardening() -> None:
    body = body_for(spec())
    assert body["name"] == "job_job_1"
    assert body["labels"] == {
        "flashpods-job": "true",
        "flashpods-job-id": "job_1",
        "flashpods-job-type": "worker",
        "flashpods-instance": "inst",
    }
    # What `--cpus 2 --memory 4g` gave: quota/period 200000/100000, swap twice the limit.
    assert body["resource_limits"] == {
        "cpu": {"quota": 200_000, "period": 100_000},
        "memory": {"limit": 4 << 30, "swap": 8 << 30},
        "pids": {"limit": ctr.PIDS_LIMIT},
    }
    assert body["no_new_privileges"] is True
    assert body["cap_drop"] == ["ALL"]
    assert body["init"] is True
    assert body["stop_timeout"] == ctr.STOP_GRACE_SECONDS
    assert body["log_configuration"] == {"driver": "k8s-file", "path": str(RAW), "size": 1 << 20}
    # Nothing of the host's is writable to the job; the gate is a FIFO it only reads.
    assert binds(body) == [GATE_MOUNT]
    # podman's default network unless one is configured.
    assert "netns" not in body and "Networks" not in body
    json.dumps(body)  # a JSON body as it is


def test_a_configured_network_is_joined_in_bridge_mode() -> None:
    body = body_for(spec(), network="flashpods-jobs")
    assert body["netns"] == {"nsmode": "bridge"}
    assert body["Networks"] == {"flashpods-jobs": {}}


def test_rootless_keeps_id_and_rootful_runs_as_the_api_user() -> None:
    rootless = body_for(spec(), rootless=True)
    assert rootless["userns"] == {"nsmode": "keep-id"} and "user" not in rootless
    rootful = body_for(spec(), rootless=False)
    assert rootful["user"] == "1000:100" and "userns" not in rootful


def test_agent_texts_are_env_values_never_argv() -> None:
    job = spec(job_type="agent", command=None, task="secret plan", context="c", git_branch="b")
    body = body_for(job)
    assert body["command"] == [
        "/bin/sh",
        "-c",
        'read _ < /run/flashpods/gate && exec "$0"',
        ctr.AGENT_ENTRYPOINT,
    ]
    assert list(body["env"]) == [
        "FLASHPODS_TASK",
        "FLASHPODS_CONTEXT",
        "FLASHPODS_GIT_BRANCH",
        "FLASHPODS_JOB_ID",
        "FLASHPODS_AGENT_COMMAND",
        "FLASHPODS_MODEL_BASE_URL",
        "FLASHPODS_MODEL_MAX_RETRIES",
        "FLASHPODS_MODEL_TIMEOUT_MS",
    ]
    assert body["env"]["FLASHPODS_TASK"] == "secret plan"
    assert not any("secret plan" in a for a in body["command"])
    model = ModelService("http://198.51.100.2:8001", max_retries=1, timeout_ms=5000)
    env = ctr.job_environment(job, "claude", model)
    assert env["FLASHPODS_TASK"] == "secret plan"
    assert env["FLASHPODS_AGENT_COMMAND"] == "claude"
    assert env["FLASHPODS_MODEL_BASE_URL"] == "http://198.51.100.2:8001"
    assert (env["FLASHPODS_MODEL_MAX_RETRIES"], env["FLASHPODS_MODEL_TIMEOUT_MS"]) == ("1", "5000")
    # Unset: empty values, so the CLI keeps its own defaults.
    assert ctr.job_environment(job, "claude", ModelService())["FLASHPODS_MODEL_BASE_URL"] == ""
    assert body["labels"]["flashpods-job-type"] == "agent"


def test_a_worker_without_a_command_is_refused() -> None:
    with pytest.raises(ValueError):
        body_for(spec(command=None))


def test_mount_modes() -> None:
    assert ctr.Mount(Path("/s/u"), "/work", read_only=True).body()["options"] == ["ro"]
    assert ctr.Mount(Path("/s/u"), "/work", read_only=False).body()["options"] == ["rw"]


def test_list_filters_on_this_instance() -> None:
    assert ctr.job_labels("inst") == {"flashpods-job": "true", "flashpods-instance": "inst"}


def test_scrub_paths_hides_host_paths_but_keeps_image_names() -> None:
    text = 'Error: statfs /var/lib/flashpods/x: no such file; image "localhost/img:1" unknown'
    assert ctr.scrub_paths(text) == (
        'Error: statfs <path>: no such file; image "localhost/img:1" unknown'
    )


def test_the_root_is_read_only_and_scratch_is_a_sized_tmpfs() -> None:
    body = body_for(spec(disk_gb=3))
    # No tmpfs of podman's own on /run, /tmp, /var/tmp (what --read-only-tmpfs=false did).
    assert (body["read_only_filesystem"], body["read_write_tmpfs"]) == (True, False)
    size = 3 << 30
    assert [m["source"] for m in body["mounts"] if m["type"] == "tmpfs"] == ["tmpfs"] * 3
    assert tmpfs(body) == {
        "/tmp": [f"size={size}", "mode=1777"],
        "/artifacts": [f"size={size}", "mode=0755", "U"],
        "/work": [f"size={size}", "mode=0755", "ro"],
    }


def agent(**overrides: object) -> JobSpec:
    return spec(job_type="agent", command=None, task="t", git_branch="b", **overrides)


def test_without_an_upload_an_agent_gets_an_empty_writable_work() -> None:
    body = body_for(agent(disk_gb=1))
    assert tmpfs(body)["/work"] == [f"size={1 << 30}", "mode=0755", "U"]
    assert binds(body) == [GATE_MOUNT]


def test_with_an_upload_a_worker_reads_it_at_work() -> None:
    body = body_for(spec(upload_dir=Path("/snap/u1")))
    assert "/work" not in tmpfs(body)
    upload = {"destination": "/work", "type": "bind", "source": "/snap/u1", "options": ["ro"]}
    assert binds(body) == [upload, GATE_MOUNT]


def test_with_an_upload_an_agent_writes_a_private_copy_never_the_upload() -> None:
    body = body_for(agent(upload_dir=Path("/snap/u1"), disk_gb=2))
    upload = {
        "destination": ctr.UPLOAD_TARGET,
        "type": "bind",
        "source": "/snap/u1",
        "options": ["ro"],
    }
    assert binds(body) == [upload, GATE_MOUNT]
    assert tmpfs(body)["/work"] == [f"size={2 << 30}", "mode=0755", "U"]


def test_without_a_gate_the_command_starts_at_once() -> None:
    worker = body_for(spec(), gate=None)
    assert worker["command"] == list(ctr.WORKER_SHELL)
    assert binds(worker) == []
    assert ctr.entry_argv(spec(job_type="agent", command=None), gated=False) == [
        ctr.AGENT_ENTRYPOINT
    ]
