"""The argv of `podman create` (the one podman call the runtime makes as a program; the
others go to podman's REST API, podman_rest) and the names it gives, as pure functions.

User text (the worker's command, the agent's task and context) only ever becomes an
environment value of the podman client, passed on as `-e NAME` (value taken from the
client's environment): podman is exec'd directly, no shell on the host sees it, and it
never shows in `ps` on the host — neither as podman's argv nor as the container shell's
(which reads `eval "$FLASHPODS_COMMAND"`); /proc/<pid>/environ is its owner's alone.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from flashpods.api.config import ModelService
from flashpods.api.runtime import JobSpec
from flashpods.common.envconfig import PULL_POLICIES

LABEL_JOB = "flashpods-job"
LABEL_JOB_ID = "flashpods-job-id"
LABEL_JOB_TYPE = "flashpods-job-type"
LABEL_INSTANCE = "flashpods-instance"

AGENT_ENTRYPOINT = "/opt/flashpods/bin/flashpods-agent-entrypoint"
STOP_GRACE_SECONDS = 10
# Processes and threads per container: a fork bomb ends at EAGAIN inside its own job
# (half of podman's containers.conf default of 2048, explicit so no host setting lifts it).
PIDS_LIMIT = 1024
GIB = 1 << 30


@dataclass(frozen=True)
class Mount:
    source: Path
    target: str
    read_only: bool

    def volume_arg(self) -> str:
        # Paths with ':' or ',' would be misparsed by -v; the runtime's own paths never have
        # them (job IDs are hex), and the configured ones are checked in PodmanConfig.
        return f"{self.source}:{self.target}:{'ro' if self.read_only else 'rw'}"

    def args(self) -> list[str]:
        return ["-v", self.volume_arg()]


@dataclass(frozen=True)
class Tmpfs:
    """A size-limited tmpfs the kernel enforces (ENOSPC); its pages are charged to the
    container's memory cgroup, so it is part of the job's memory."""

    target: str
    size_bytes: int
    read_only: bool = False
    sticky: bool = False  # 1777 like /tmp; else 0755
    owned_by_user: bool = False  # chown to the container's user (a writable /work)

    def args(self) -> list[str]:
        spec = f"type=tmpfs,destination={self.target},tmpfs-size={self.size_bytes}"
        spec += f",tmpfs-mode={'1777' if self.sticky else '0755'}"
        if self.read_only:
            spec += ",ro=true"
        if self.owned_by_user:
            spec += ",chown=true"
        return ["--mount", spec]


UPLOAD_TARGET = "/run/flashpods/upload"  # an agent's upload, copied into its /work
# A FIFO the job's command waits on until the runtime has pinned its /artifacts: a fast
# job could otherwise exit, and take its tmpfs with it, first (artifactpin.py).
GATE_TARGET = "/run/flashpods/gate"


def scratch_mounts(spec: JobSpec) -> list[Tmpfs]:
    """The job's only writable places (its root is read-only), each a tmpfs of disk_gb:
    /tmp; /artifacts (pinned and copied out after the exit, artifactpin.py); and /work
    when there is no upload (empty; read-only for a worker) or for an agent (writable,
    filled from the read-only upload at UPLOAD_TARGET by the agent's entrypoint)."""
    size = spec.disk_gb * GIB
    mounts = [
        Tmpfs("/tmp", size, sticky=True),
        Tmpfs("/artifacts", size, owned_by_user=True),
    ]
    if spec.job_type == "agent":
        mounts.append(Tmpfs("/work", size, owned_by_user=True))
    elif spec.upload_dir is None:
        mounts.append(Tmpfs("/work", size, read_only=True))
    return mounts


def upload_mount(spec: JobSpec) -> Mount | None:
    """The finalized upload, read-only for every job: a worker's /work; an agent's copy
    source (no job can write to a snapshot, which later uploads may be based on)."""
    if spec.upload_dir is None:
        return None
    target = UPLOAD_TARGET if spec.job_type == "agent" else "/work"
    return Mount(spec.upload_dir, target, read_only=True)


@dataclass(frozen=True)
class ContainerUser:
    """How the container's processes map to the API's own user."""

    rootless: bool
    uid: int
    gid: int

    def args(self) -> list[str]:
        if self.rootless:
            # keep-id maps the API user's uid/gid to the same ids inside and runs as them.
            return ["--userns=keep-id"]
        # Rootful: keep-id is rootless-only; run as the API's own uid:gid directly.
        return ["--user", f"{self.uid}:{self.gid}"]


def base(socket_path: Path, podman_binary: str = "podman") -> list[str]:
    return [podman_binary, "--url", f"unix://{socket_path}"]


def container_name(job_id: str) -> str:
    return f"job_{job_id}"


# The worker's shell runs the command from its environment: this text is all `ps` shows.
WORKER_SHELL = ("/bin/sh", "-c", 'eval "$FLASHPODS_COMMAND"')


def entry_argv(spec: JobSpec, gated: bool) -> list[str]:
    """What the container runs: the worker's shell or the agent's entrypoint, behind the
    gate (one line read from GATE_TARGET) when `gated`."""
    wait = f"read _ < {GATE_TARGET} && "
    if spec.job_type == "agent":
        if not gated:
            return [AGENT_ENTRYPOINT]
        return ["/bin/sh", "-c", wait + 'exec "$0"', AGENT_ENTRYPOINT]
    shell, flag, command = WORKER_SHELL
    return [shell, flag, (wait if gated else "") + command]


def job_environment(
    spec: JobSpec, agent_command: str, model_service: ModelService
) -> dict[str, str]:
    """Values handed to the podman client's environment and passed by name with `-e`."""
    if spec.job_type != "agent":
        return {"FLASHPODS_COMMAND": spec.command or ""}
    return {
        "FLASHPODS_TASK": spec.task or "",
        "FLASHPODS_CONTEXT": spec.context or "",
        "FLASHPODS_GIT_BRANCH": spec.git_branch or "",
        "FLASHPODS_JOB_ID": spec.job_id,
        "FLASHPODS_AGENT_COMMAND": agent_command,
        **model_service.environment(),
    }


def create_args(
    spec: JobSpec,
    *,
    instance: str,
    user: ContainerUser,
    mounts: Sequence[Mount],
    pull_policy: str,
    raw_log_path: Path,
    raw_log_max_bytes: int,
    gate: Path | None = None,
) -> list[str]:
    """Arguments after `podman --url ...` for `create` of one job's container. The runtime
    always passes `gate` (a FIFO it opens once /artifacts is pinned); without one the
    command starts at once (tests that never collect artifacts)."""
    if pull_policy not in PULL_POLICIES:
        raise ValueError(f"unknown pull policy {pull_policy!r}")
    args = [
        "create",
        "--name",
        container_name(spec.job_id),
        # The role label is set explicitly so an image label can never supply another role
        # (SPIRE attests by it).
        "--label",
        f"{LABEL_JOB}=true",
        "--label",
        f"{LABEL_JOB_ID}={spec.job_id}",
        "--label",
        f"{LABEL_JOB_TYPE}={spec.job_type}",
        "--label",
        f"{LABEL_INSTANCE}={instance}",
        "--cpus",
        str(spec.cpus),
        "--memory",
        f"{spec.memory_gb}g",
        "--pids-limit",
        str(PIDS_LIMIT),
        # Nothing the job writes lands in podman's storage: the image's files are read-only,
        # scratch is a size-limited tmpfs (scratch_mounts), and podman adds no unbounded
        # tmpfs of its own (/run, /var/tmp stay the image's, read-only).
        "--read-only",
        "--read-only-tmpfs=false",
        *user.args(),
        "--security-opt",
        "no-new-privileges",
        "--cap-drop",
        "ALL",
        # A real init as PID 1 forwards the stop signal to the job and reaps zombies; a
        # bare `sh -c` as PID 1 would ignore SIGTERM and always take the SIGKILL path.
        "--init",
        f"--pull={pull_policy}",
        "--stop-timeout",
        str(STOP_GRACE_SECONDS),
        # conmon writes stdout/stderr with nanosecond timestamps to a file the runtime reads;
        # max-size bounds podman's own copy (conmon rotates it) whatever the job prints.
        "--log-driver",
        "k8s-file",
        "--log-opt",
        f"path={raw_log_path}",
        "--log-opt",
        f"max-size={raw_log_max_bytes}",
    ]
    for mount in mounts:
        args += mount.args()
    if gate is not None:
        args += Mount(gate, GATE_TARGET, read_only=True).args()
    for scratch in scratch_mounts(spec):
        args += scratch.args()
    if spec.job_type != "agent" and not spec.command:
        raise ValueError("a worker job needs a command")
    for name in job_environment(spec, "", ModelService()):
        args += ["-e", name]
    return [*args, "--workdir", "/work", spec.image, *entry_argv(spec, gate is not None)]


def job_labels(instance: str) -> dict[str, str]:
    """The labels every job container of this instance carries (listing filters on them)."""
    return {LABEL_JOB: "true", LABEL_INSTANCE: instance}


_HOST_PATH = re.compile(r"(?<![\w.-])/[^\s:'\"]*")


def scrub_paths(message: str) -> str:
    """podman's error text with host paths replaced, so it is safe to show to clients."""
    return _HOST_PATH.sub("<path>", message).strip()


def one_line(stderr: str) -> str:
    """podman's whole error text, every path kept, as one log line (its lines joined)."""
    return " | ".join(line.strip() for line in stderr.splitlines() if line.strip())
