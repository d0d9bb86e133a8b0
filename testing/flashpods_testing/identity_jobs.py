"""Job containers on an IdentityStack (the identity tests and bench/token_exchange.py):
made by the runtime's own container_spec (flashpods_testing.job_containers), against the
stack's podman API socket, with its SPIRE socket directory, token socket and tools
directory mounted as the API mounts them.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from flashpods.api.runtime.podman_spec import ContainerUser
from flashpods.common.polling import poll
from flashpods.common.programs import run_program
from flashpods.deployment import JOB_IMAGE

from flashpods_testing.identity_stack import IdentityStack
from flashpods_testing.job_containers import (
    SAME_ROLE,
    JobContainers,
    Ran,
    identity_mounts,
    job_spec,
)
from flashpods_testing.localhost import as_assertion

AUDIENCE = "flashpods-token-service"
TEST_UID = 62001
FETCH_JWT = (
    "/opt/flashpods/bin/spire-agent",
    "api",
    "fetch",
    "jwt",
    "-socketPath",
    "/run/spire/sockets/agent.sock",
    "-output",
    "json",
    "-timeout",
    "3s",
    "-audience",
)


@dataclass
class Containers:
    stack: IdentityStack
    uid: int
    gid: int
    instance: str
    scratch: Path  # the jobs' log files and artifacts directories
    jobs: JobContainers = field(init=False)

    def __post_init__(self) -> None:
        settings = self.stack.settings
        self.jobs = JobContainers(
            podman=("podman", "--url", f"unix://{self.stack.podman_socket}"),
            socket=self.stack.podman_socket,
            instance=self.instance,
            user=ContainerUser(rootless=False, uid=self.uid, gid=self.gid),
            mounts=identity_mounts(
                settings.agent_socket_path.parent, self.stack.token_socket, self.stack.tools_dir
            ),
        )

    def podman(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        cmd = ["podman", "--url", f"unix://{self.stack.podman_socket}", *args]
        return run_program(cmd, fail=as_assertion, check=check, timeout=timeout)

    def run(
        self,
        command: Sequence[str],
        *,
        role: str | None,
        image: str = JOB_IMAGE,
        uid: int | None = None,
    ) -> Ran:
        """`command` as a worker's, in a container carrying the role label `role` (none:
        no label), running as `uid` (default: the workload's, like the API's jobs)."""
        spec = job_spec(self.scratch, "worker", command=command, image=image)
        user = None if uid is None else ContainerUser(rootless=False, uid=uid, gid=uid)
        return self.jobs.run(spec, role=SAME_ROLE if role == "worker" else role, user=user)

    def fetch_jwt(
        self, *, role: str | None, audience: str = AUDIENCE, uid: int | None = None
    ) -> Ran:
        return self.run([*FETCH_JWT, audience], role=role, uid=uid)

    def jwt(self, *, role: str, audience: str = AUDIENCE) -> str:
        proc = self.fetch_jwt(role=role, audience=audience)
        assert proc.returncode == 0, proc.stderr
        token: str = json.loads(proc.stdout)[0]["svids"][0]["svid"]
        return token

    def remove_all(self) -> None:
        ids = self.podman(
            "ps", "-aq", "--filter", f"label=flashpods-instance={self.instance}"
        ).stdout.split()
        if ids:
            self.podman("rm", "-f", "-t", "0", *ids, check=False)


def wait_until_issued(containers: Containers, timeout: float = 40) -> None:
    """New entries reach the agent after ~10 s: poll until a worker gets its SVID."""
    last_error = ""

    def issued() -> bool:
        nonlocal last_error
        proc = containers.fetch_jwt(role="worker")
        last_error = proc.stderr
        return proc.returncode == 0

    if not poll(issued, timeout, interval=1):
        raise AssertionError(f"no worker SVID after {timeout:.0f} s: {last_error}")
