"""Helpers of the identity integration tests: containers of the job image run against
the test's own podman API socket, with the SPIRE socket directory, the token socket
and the tools directory mounted as the API mounts them.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass

from flashpods.common.polling import poll
from flashpods.common.programs import run_program
from flashpods.deployment import JOB_IMAGE
from flashpods_testing.identity_stack import IdentityStack
from flashpods_testing.localhost import as_assertion

AUDIENCE = "flashpods-token-service"
TEST_UID = 62001


@dataclass
class Containers:
    stack: IdentityStack
    uid: int
    gid: int
    instance: str

    def podman(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        cmd = ["podman", "--url", f"unix://{self.stack.podman_socket}", *args]
        return run_program(cmd, fail=as_assertion, check=check, timeout=timeout)

    def run_args(
        self,
        command: list[str],
        *,
        role: str | None,
        image: str = JOB_IMAGE,
        user: str | None = None,
        detach: bool = False,
        extra: tuple[str, ...] = (),
    ) -> list[str]:
        args = ["run", "--pull=never", "--label", f"flashpods-instance={self.instance}"]
        args += ["-d"] if detach else ["--rm"]
        args += ["--user", user or f"{self.uid}:{self.gid}"]
        # Hardened as the API runs jobs (api.md "Container").
        args += ["--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--init"]
        if role is not None:
            args += ["--label", f"flashpods-job-type={role}"]
        args += [
            "-v",
            f"{self.stack.settings.agent_socket_path.parent}:/run/spire/sockets:ro",
            "-v",
            f"{self.stack.token_socket}:/run/flashpods/token.sock:ro",
            "-v",
            f"{self.stack.tools_dir}:/opt/flashpods:ro",
            *extra,
            image,
            *command,
        ]
        return args

    def run(
        self, command: list[str], *, role: str | None, **kw: object
    ) -> subprocess.CompletedProcess[str]:
        return self.podman(*self.run_args(command, role=role, **kw), check=False)  # type: ignore[arg-type]

    def fetch_jwt(
        self, *, role: str | None, audience: str = AUDIENCE, **kw: object
    ) -> subprocess.CompletedProcess[str]:
        cmd = [
            "/opt/flashpods/bin/spire-agent",
            "api",
            "fetch",
            "jwt",
            "-audience",
            audience,
            "-socketPath",
            "/run/spire/sockets/agent.sock",
            "-output",
            "json",
            "-timeout",
            "3s",
        ]
        return self.run(cmd, role=role, **kw)

    def jwt(self, *, role: str, audience: str = AUDIENCE, **kw: object) -> str:
        proc = self.fetch_jwt(role=role, audience=audience, **kw)
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
