"""A job's container as podman's libpod SpecGenerator (the JSON body of `POST
/libpod/containers/create`, podman_rest.PodmanApi.create): the one definition of a job's
container, and the names it gives, as pure functions.

User text (the worker's command, the agent's task and context) only ever becomes a value
in the body's `env`: it travels over the API socket, no process on the host has it in its
argv (no podman client runs), and the container's shell reads it with
`eval "$FLASHPODS_COMMAND"`, so `ps` on the host shows it nowhere.

Each field is what podman's own CLI sent for the flags the runtime used to pass to
`podman create` (--cpus, --memory, --pids-limit, --read-only --read-only-tmpfs=false,
--user / --userns=keep-id, --security-opt no-new-privileges, --cap-drop ALL, --init,
--stop-timeout, --log-driver k8s-file --log-opt path=/max-size=, -v, --mount type=tmpfs,
-e, --workdir). Evidence, podman 4.3 (Debian 12: the lab, CI) and 5.x (NixOS 24.05
ships 5.0.x, nixpkgs PR 304891):

- 4.3, run here: a container made by `podman create` with those flags and one made
  from this body, compared field by field in `podman inspect`, differ only in
  CreateCommand (the CLI's own argv), the CLI's annotation io.kubernetes.cri-o.TTY=false
  and its default sdnotifyMode "container" (jobs never speak sd_notify). Same limits
  (CpuQuota 200000 / CpuPeriod 100000 for 2 CPUs, MemorySwap twice Memory, PidsLimit),
  user, Init, ReadonlyRootfs with no extra tmpfs, CapDrop, SecurityOpt, LogConfig,
  binds, tmpfs options, env (podman adds PATH, TERM, container=podman either way);
  `Networks: {name: {}}` with netns bridge joins that network.
- podman's sources (containers/podman; a v5 tree, and v4 where noted):
  pkg/specgen/specgen.go: the JSON keys name, labels, env, command, stop_timeout,
  log_configuration{driver,path,size}, image, init, mounts (OCI runtime-spec Mount:
  destination, type, source, options), work_dir, user, cap_drop, no_new_privileges,
  userns, read_only_filesystem, read_write_tmpfs, netns, resource_limits
  (runtime-spec LinuxResources: cpu{quota,period}, memory{limit,swap}, pids{limit}),
  and Networks, which has no JSON tag (its Go name is its key in 4.3 and 5). 5.x made
  init, no_new_privileges, read_only_filesystem and read_write_tmpfs *bool: the same
  JSON true/false fills a bool and a *bool, and read_write_tmpfs is always sent, so no
  server default decides it. pkg/specgenutil/specgen.go (5.x) sets read_write_tmpfs to
  read-only && read-only-tmpfs, false here. pkg/util/utils.go CoresToPeriodAndQuota:
  period 100000, quota = cores * period. pkg/specgenutil/volumes.go (4.x and 5.x):
  `chown=true` on a tmpfs is the mount option "U". pkg/api/handlers/libpod/
  containers_create.go (4.x and 5.x): a body with a memory limit and no swap gets swap =
  2 * limit (LimitToSwap, as the CLI did for --memory alone); it is sent explicitly all
  the same. There 5.x answers an unknown image with 404 "no such image: …" where 4.3
  answers 500; both become the same ContainerError shape.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flashpods.api.config import ModelService
from flashpods.api.runtime import JobSpec

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
# The CFS period podman's `--cpus` uses; the quota is cpus * period.
CPU_PERIOD_US = 100_000

Body = dict[str, Any]


@dataclass(frozen=True)
class Mount:
    """A host path bind-mounted into the job."""

    source: Path
    target: str
    read_only: bool

    def body(self) -> Body:
        return {
            "destination": self.target,
            "type": "bind",
            "source": str(self.source),
            "options": ["ro" if self.read_only else "rw"],
        }


@dataclass(frozen=True)
class Tmpfs:
    """A size-limited tmpfs the kernel enforces (ENOSPC); its pages are charged to the
    container's memory cgroup, so it is part of the job's memory."""

    target: str
    size_bytes: int
    read_only: bool = False
    sticky: bool = False  # 1777 like /tmp; else 0755
    owned_by_user: bool = False  # chown to the container's user (a writable /work)

    def body(self) -> Body:
        options = [f"size={self.size_bytes}", f"mode={'1777' if self.sticky else '0755'}"]
        if self.read_only:
            options.append("ro")
        if self.owned_by_user:
            options.append("U")  # what `--mount …,chown=true` became
        return {"destination": self.target, "type": "tmpfs", "source": "tmpfs", "options": options}


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

    def body(self) -> Body:
        if self.rootless:
            # keep-id maps the API user's uid/gid to the same ids inside and runs as them.
            return {"userns": {"nsmode": "keep-id"}}
        # Rootful: keep-id is rootless-only; run as the API's own uid:gid directly.
        return {"user": f"{self.uid}:{self.gid}"}


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
    """The job's own environment: the user's texts, and an agent's settings."""
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


def container_spec(
    spec: JobSpec,
    *,
    instance: str,
    user: ContainerUser,
    mounts: Sequence[Mount],
    raw_log_path: Path,
    raw_log_max_bytes: int,
    environment: dict[str, str],
    gate: Path | None = None,
    network: str | None = None,
) -> Body:
    """The SpecGenerator of one job's container. The runtime always passes `gate` (a
    FIFO it opens once /artifacts is pinned); without one the command starts at once
    (tests that never collect artifacts). `network`: the podman network it joins (in
    bridge mode); None leaves it to podman's default."""
    if spec.job_type != "agent" and not spec.command:
        raise ValueError("a worker job needs a command")
    memory = spec.memory_gb * GIB
    binds = [*mounts, *([] if gate is None else [Mount(gate, GATE_TARGET, read_only=True)])]
    body: Body = {
        "name": container_name(spec.job_id),
        # The role label is set here so an image label can never supply another role
        # (SPIRE attests by it).
        "labels": {
            LABEL_JOB: "true",
            LABEL_JOB_ID: spec.job_id,
            LABEL_JOB_TYPE: spec.job_type,
            LABEL_INSTANCE: instance,
        },
        "image": spec.image,
        "command": entry_argv(spec, gate is not None),
        "work_dir": "/work",
        "env": dict(environment),
        "resource_limits": {
            "cpu": {"quota": spec.cpus * CPU_PERIOD_US, "period": CPU_PERIOD_US},
            # As `--memory` alone set it: memory + swap = twice the limit.
            "memory": {"limit": memory, "swap": 2 * memory},
            "pids": {"limit": PIDS_LIMIT},
        },
        # Nothing the job writes lands in podman's storage: the image's files are read-only,
        # scratch is a size-limited tmpfs (scratch_mounts), and podman adds no unbounded
        # tmpfs of its own (/run, /var/tmp stay the image's, read-only).
        "read_only_filesystem": True,
        "read_write_tmpfs": False,
        **user.body(),
        "no_new_privileges": True,
        "cap_drop": ["ALL"],
        # A real init as PID 1 forwards the stop signal to the job and reaps zombies; a
        # bare `sh -c` as PID 1 would ignore SIGTERM and always take the SIGKILL path.
        "init": True,
        "stop_timeout": STOP_GRACE_SECONDS,
        # conmon writes stdout/stderr with nanosecond timestamps to a file the runtime reads;
        # size bounds podman's own copy (conmon rotates it) whatever the job prints.
        "log_configuration": {
            "driver": "k8s-file",
            "path": str(raw_log_path),
            "size": raw_log_max_bytes,
        },
        "mounts": [m.body() for m in binds] + [t.body() for t in scratch_mounts(spec)],
    }
    if network is not None:
        body["netns"] = {"nsmode": "bridge"}
        body["Networks"] = {network: {}}
    return body


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
