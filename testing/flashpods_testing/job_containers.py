"""Job containers for the attestation tests, made by the runtime's own definition.

They are created through the runtime's own call (podman_rest.PodmanApi.create) with
exactly the body `podman_spec.container_spec` gives the API (labels, user, hardening,
read-only root, the scratch and /artifacts tmpfs, the worker's shell reading
FLASHPODS_COMMAND from the environment `job_environment` fills, behind its gate); then,
as the runtime does, `podman start`, the /artifacts pin through PID 1 (artifactpin) and
the gate opened; `run` waits for the end and reads `podman logs`. What a test may
change, and only through this module:

- the role label (`role=`): replaced or left out, for the containers SPIRE must not
  trust (`with_role` checks container_spec set it to the job's type);
- the podman network (`network=`), as `podman --network` took it: a network mode
  (`with_network`: bridge, slirp4netns, …) or a network's name (container_spec's own
  `network`, the API's FLASHPODS_JOB_NETWORK); unset, podman's default. The lab's tests
  pick one per trust boundary;
- the mounts: the caller's, as the API's own `_mounts` would give them (the upload's:
  `podman_spec.upload_mount`).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flashpods.api.config import ModelService
from flashpods.api.runtime import JobSpec, JobType, artifactpin
from flashpods.api.runtime import podman_spec as ctr
from flashpods.api.runtime.podman import (
    GATE_SECONDS,
    RAW_LOG_MIN_BYTES,
    gate_path,
    raw_log_path,
)
from flashpods.api.runtime.podman_rest import PodmanApi
from flashpods.common.limits import LIMITS
from flashpods.common.programs import run_program
from flashpods.deployment import JOB_IMAGE

from flashpods_testing.localhost import as_assertion

SAME_ROLE = "same"  # with_role: keep the label container_spec set


def with_role(body: dict[str, Any], spec: JobSpec, role: str | None) -> dict[str, Any]:
    """container_spec's body for `spec` with its role label (the one SPIRE attests by)
    set to `role`, or left out when `role` is None."""
    labels = dict(body["labels"])
    assert labels.get(ctr.LABEL_JOB_TYPE) == spec.job_type, f"no role label: {labels}"
    del labels[ctr.LABEL_JOB_TYPE]
    if role is not None:
        labels[ctr.LABEL_JOB_TYPE] = role
    return {**body, "labels": labels}


# The values `podman --network` reads as a mode rather than a network's name
# (pkg/specgen/namespaces.go, ParseNetworkFlag; the same in podman 4.3 and 5).
NETWORK_MODES = ("bridge", "slirp4netns", "pasta", "host", "none", "private")


def with_network(body: dict[str, Any], mode: str) -> dict[str, Any]:
    """container_spec's body in network mode `mode` (bridge: podman's default network)."""
    assert mode in NETWORK_MODES, mode
    assert "netns" not in body and "Networks" not in body, "container_spec chose a network"
    return {**body, "netns": {"nsmode": mode}}


def job_spec(
    scratch: Path,
    job_type: JobType,
    *,
    command: Sequence[str] = (),
    image: str = JOB_IMAGE,
    upload_dir: Path | None = None,
    task: str | None = None,
    context: str | None = None,
    git_branch: str | None = None,
) -> JobSpec:
    """A job as the API would hand it to the runtime, its files under `scratch`; a
    worker's `command` (an argv) becomes its command text."""
    job_id = uuid.uuid4().hex
    limits = LIMITS[job_type]
    return JobSpec(
        job_id=job_id,
        job_type=job_type,
        image=image,
        cpus=limits.default_cpus,
        memory_gb=limits.default_memory_gb,
        timeout_minutes=limits.default_timeout,
        artifacts_dir=scratch / job_id / "artifacts",
        log_path=scratch / job_id / "job.log",
        upload_dir=upload_dir,
        command=shlex.join(command) if job_type == "worker" else None,
        task=task,
        context=context,
        git_branch=git_branch,
    )


def identity_mounts(
    spire_socket_dir: Path, token_socket: Path, tools_dir: Path
) -> tuple[ctr.Mount, ...]:
    """The read-only mounts the API gives every job (podman.py's `_mounts`)."""
    return (
        ctr.Mount(spire_socket_dir, "/run/spire/sockets", read_only=True),
        ctr.Mount(token_socket, "/run/flashpods/token.sock", read_only=True),
        ctr.Mount(tools_dir, "/opt/flashpods", read_only=True),
    )


@dataclass(frozen=True)
class Ran:
    """A container that ran to its end: what it said, and the labels it carried."""

    returncode: int
    stdout: str
    stderr: str
    labels: dict[str, str]


@dataclass(frozen=True)
class JobContainers:
    podman: tuple[str, ...]  # the argv up to and including `--url unix://…`
    socket: Path  # the same podman's API socket (creates go through it, as the API's)
    instance: str
    user: ctr.ContainerUser
    mounts: tuple[ctr.Mount, ...]
    agent_command: str = "claude"

    def _podman(
        self, args: Sequence[str], *, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return run_program([*self.podman, *args], fail=as_assertion, check=False, timeout=timeout)

    def create(
        self,
        spec: JobSpec,
        *,
        role: str | None = SAME_ROLE,
        network: str | None = None,
        user: ctr.ContainerUser | None = None,
        mounts: Sequence[ctr.Mount] = (),
    ) -> str:
        """The container's id, created as the runtime creates `spec`'s: its command waits
        on its gate until `start` has pinned its /artifacts."""
        user = user or self.user
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        gate = gate_path(spec)
        os.mkfifo(gate, 0o600)
        os.chown(gate, user.uid, user.gid)  # the API's own user, as the container's
        body = ctr.container_spec(
            spec,
            instance=self.instance,
            user=user,
            mounts=[*self.mounts, *mounts],
            raw_log_path=raw_log_path(spec),
            raw_log_max_bytes=RAW_LOG_MIN_BYTES,
            environment=ctr.job_environment(spec, self.agent_command, ModelService()),
            gate=gate,
            network=None if network in NETWORK_MODES else network,
        )
        if role != SAME_ROLE:
            body = with_role(body, spec, role)
        if network in NETWORK_MODES:
            body = with_network(body, network)
        return PodmanApi(self.socket).create(body)

    def start(self, spec: JobSpec, container: str) -> None:
        """As the runtime starts a job: start, pin /artifacts through PID 1, open the gate."""
        started = self._podman(["start", container])
        assert started.returncode == 0, started.stderr
        lifetime = spec.timeout_minutes * 60
        pid = self._state(container)["Pid"]
        artifactpin.pin(pid, spec.job_id, spec.disk_gb * ctr.GIB, lifetime, GATE_SECONDS)
        assert artifactpin.open_gate(gate_path(spec), GATE_SECONDS), "nobody read the gate"

    def labels(self, container: str) -> dict[str, str]:
        labels: dict[str, str] = self._inspect(container)["Config"]["Labels"] or {}
        return labels

    def remove(self, spec: JobSpec, container: str) -> None:
        artifactpin.release(spec.job_id)
        self._podman(["rm", "--force", "--time", "0", container])
        gate_path(spec).unlink(missing_ok=True)

    def _state(self, container: str) -> dict[str, Any]:
        state: dict[str, Any] = self._inspect(container)["State"]
        return state

    def _inspect(self, container: str) -> dict[str, Any]:
        # The plain JSON array: podman 4.3's remote client breaks on `--format '{"k":…}'`.
        inspected = self._podman(["container", "inspect", container])
        assert inspected.returncode == 0, inspected.stderr
        found: dict[str, Any] = json.loads(inspected.stdout)[0]
        return found

    def run(self, spec: JobSpec, *, timeout: float = 120, **create: Any) -> Ran:
        """Create (with `create`'s options) and start as the runtime does, wait for the
        end; then what it printed, what it left in /artifacts (copied to
        spec.artifacts_dir) and the container is removed."""
        container = self.create(spec, **create)
        try:
            labels = self.labels(container)
            self.start(spec, container)
            waited = self._podman(["wait", container], timeout=timeout)
            assert waited.returncode == 0, waited.stderr
            ended = self._state(container)
            assert ended["Status"] == "exited", ended
            said = self._podman(["logs", container])
            pinned = artifactpin.open_pinned(spec.job_id)
            try:
                shutil.copytree(f"/proc/self/fd/{pinned}", spec.artifacts_dir, dirs_exist_ok=True)
            finally:
                os.close(pinned)
            return Ran(ended["ExitCode"], said.stdout, said.stderr, labels)
        finally:
            self.remove(spec, container)
