"""Running commands for the lab: plain, inside a network namespace, or as a user.

Namespaces are entered with `nsenter --net=` (not `ip netns exec`, which remounts
/sys and hides the cgroup mounts podman needs); users are switched with `setpriv`
(supplementary groups and no_new_privs like a systemd unit). Both exec, so the pid
we record is the service's own.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence

from flashpods.common.programs import ProgramFailure, run_program
from flashpods.lab.topology import NETNS_DIR


class LabError(Exception):
    """A failure the CLI reports as one clear line."""


def in_netns(ns: str, argv: Sequence[str]) -> list[str]:
    return ["nsenter", f"--net={NETNS_DIR / ns}", "--", *argv]


def as_user(user: str, group: str, argv: Sequence[str], *, no_new_privs: bool) -> list[str]:
    prefix = ["setpriv", f"--reuid={user}", f"--regid={group}", "--init-groups"]
    if no_new_privs:
        prefix.append("--no-new-privs")
    return [*prefix, "--", *argv]


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    input: str | None = None,
    timeout: float = 60,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run and capture; a failure becomes a LabError naming the command and its stderr."""
    return run_program(argv, fail=_lab_error, check=check, input=input, timeout=timeout, env=env)


def _lab_error(failure: ProgramFailure) -> LabError:
    if failure.reason == "not found":
        return LabError(f"missing program: {failure.argv[0]} (run scripts/setup.sh)")
    if failure.returncode is None:
        return LabError(f"{failure.reason}: {failure.command}")
    return LabError(
        f"{failure.command} failed ({failure.returncode}): {failure.last_line or 'no output'}"
    )


def ns_run(
    ns: str,
    argv: Sequence[str],
    *,
    check: bool = True,
    input: str | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    return run(in_netns(ns, argv), check=check, input=input, timeout=timeout)


def alive(pid: int) -> bool:
    """Whether `pid` runs; a zombie is not running (and is reaped if it is our child,
    e.g. the supervisor when `up` and `down` share a process, as in the test session)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")
