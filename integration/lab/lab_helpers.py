"""Helpers for the lab suite: a command inside a lab namespace, a TCP probe from one, a
job container on a given podman network, and the laptop's SDK in a
thread that sits in the laptop's network namespace (setns is per thread; rsync and
other children forked from that thread are in the laptop namespace too).
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from flashpods.common.polling import wait_until
from flashpods.common.programs import run_program
from flashpods.lab import lab
from flashpods.lab.jobnet import LAB_JOB_NETWORK
from flashpods.lab.proc import in_netns
from flashpods.lab.topology import Topology
from flashpods_testing.job_containers import (
    SAME_ROLE,
    JobContainers,
    Ran,
    job_spec,
)
from flashpods_testing.localhost import as_assertion

T = TypeVar("T")
JOB_NETWORK = LAB_JOB_NETWORK.name  # the podman network the lab's API puts every job on
CLONE_NEWNET = 0x40000000


def ns_sh(ns: str, script: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return run_program(
        in_netns(ns, ["sh", "-c", script]), fail=as_assertion, check=False, timeout=timeout
    )


def tcp_probe(ns: str, host: str, port: int, timeout: float = 2.0) -> str:
    """'open', 'refused' or 'dropped' (no answer within the timeout) from netns `ns`."""
    code = (
        "import socket,sys\n"
        "try: socket.create_connection((sys.argv[1], int(sys.argv[2])), float(sys.argv[3]));"
        " print('open')\n"
        "except ConnectionRefusedError: print('refused')\n"
        "except (TimeoutError, socket.timeout): print('dropped')\n"
        "except OSError as e: print('unreachable', e)\n"
    )
    out = subprocess.run(
        in_netns(ns, ["python3", "-c", code, host, str(port), str(timeout)]),
        capture_output=True,
        text=True,
        timeout=timeout + 10,
        check=True,
    )
    return out.stdout.strip()


# A probe run inside job containers (sh + curl, what every job image has): one line per
# target, "HOST:PORT open|refused|dropped", then "internet <body or curl exit code>".
# curl exits 28 when the connect times out (dropped), 7 when refused. -g: an IPv6
# target ([addr]:port) is an address, not a glob.
CONTAINER_PROBE = r"""
for target in "$@"; do
  (
    curl -g -s -o /dev/null --connect-timeout 2 -m 4 "http://$target/"; code=$?
    case $code in 28) r=dropped ;; 7) r=refused ;; *) r=open ;; esac
    echo "$target $r"
  ) &
done
wait
body=$(curl -s -m 5 http://198.51.100.2/) && echo "internet $body" || echo "internet error $?"
"""


# Through the project's helper: print a hash of each secret the token service granted.
EXCHANGE = r"""
/opt/flashpods/bin/flashpods-token-helper --require GITHUB_TOKEN sh -c '
  for name in ANTHROPIC_API_KEY GITHUB_TOKEN; do
    eval "value=\${$name-}"
    if [ -n "$value" ]; then
      echo "$name $(printf %s "$value" | sha256sum | cut -d" " -f1)"
    else
      echo "$name none"
    fi
  done'
"""


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def parse_probe(stdout: str) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in stdout.splitlines() if " " in line)


@dataclass(frozen=True)
class Podman:
    """Rootful podman of the lab (the API's podman), from the host namespace."""

    host_ns: str
    socket: str
    jobs: JobContainers  # job containers as the API makes them, on this podman
    scratch: Path  # their log files and artifacts directories

    def run(self, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        argv = in_netns(self.host_ns, ["podman", "--url", f"unix://{self.socket}", *args])
        return run_program(argv, fail=as_assertion, check=False, timeout=timeout)

    def job_container(
        self, role: str | None, network: str, command: list[str], timeout: float = 120
    ) -> Ran:
        """`command` as a worker's, in a container made from the runtime's container_spec, on
        `network`, carrying the role label `role` (None: no role label)."""
        spec = job_spec(self.scratch, "worker", command=command)
        return self.jobs.run(
            spec,
            role=SAME_ROLE if role == "worker" else role,
            network=network,
            timeout=timeout,
        )


class Laptop:
    """Runs callables in a thread that lives in the laptop's network namespace."""

    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self.env = lab.laptop_env()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, initializer=self._enter, thread_name_prefix="laptop"
        )

    def _enter(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(self.topo.netns_path(self.topo.laptop_ns), os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns(laptop) failed")
        finally:
            os.close(fd)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return self._pool.submit(fn, *args, **kwargs).result()

    def submit(
        self, fn: Callable[..., T], *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        return self._pool.submit(fn, *args, **kwargs)

    def client(self, **kwargs: Any) -> Any:
        from flashpods.client.config import load_config
        from flashpods.client.sdk import Flashpods

        return Flashpods.from_config(load_config({**os.environ, **self.env}), **kwargs)

    def close(self) -> None:
        self._pool.shutdown()


def run_demo(cwd: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """`flashpods-lab demo [options]` run from `cwd`, as a user would; it must succeed."""
    proc = subprocess.run(
        [sys.executable, "-m", "flashpods.lab.cli", "demo", *options],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    wait_until(cond, timeout, what, interval=0.1)


def unit_status() -> dict[str, Any]:
    units: dict[str, Any] = lab.read_status().get("units", {})
    return units


def kill9_and_wait_restart(name: str, timeout: float = 60) -> None:
    """kill -9 the unit's main process; the supervisor restarts it (Restart=always)."""
    before = unit_status()[name]
    os.kill(int(before["pid"]), 9)
    wait_for(
        lambda: (
            unit_status()[name]["restarts"] > before["restarts"]
            and unit_status()[name]["state"] == "active"
        ),
        timeout,
        f"{name} to restart",
    )


def secrets_file(values: dict[str, Any]) -> dict[str, str]:
    data: dict[str, str] = json.loads(
        Path(values["tokenServiceEnvironment"]["FLASHPODS_SECRETS_FILE"]).read_text()
    )
    return data
