"""A local Flashpods host for the client's tests and benchmark (no pytest in here):
a private rootful `podman system service`, the real `flashpods-api` console script on
127.0.0.1:<free port>, and a real `rsync --daemon` whose `uploads` module is the API's
uploads directory, rendered from the deployment data like the lab's and the host's.
Each is a context manager that leaves nothing behind (process, container)."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests
from flashpods.client.retry import RetryPolicy
from flashpods.client.sdk import Flashpods, PollSchedule, RetryEvent
from flashpods.deployment import values
from flashpods.lab import rsyncd

IMAGE = "localhost/flashpods-job:latest"
BIN = Path(sys.executable).parent
RUN_ID = uuid.uuid4().hex[:8]


class StackError(Exception):
    """A piece of the local host did not come up (the message says which and why)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def podman(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=False)


def wait_until(probe: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise StackError(f"{what} did not come up within {timeout} s")
        time.sleep(0.05)


@contextmanager
def podman_service(home: Path) -> Iterator[Path]:
    if podman("image", "exists", IMAGE).returncode != 0:
        raise StackError(f"{IMAGE} is missing: run scripts/build-image.sh")
    sock = home / "podman.sock"
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{sock}"],
        cwd=home,  # conmon drops an `oom` flag file into its working directory
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(sock.exists, "podman system service")
        yield sock
    finally:
        service.terminate()
        service.wait(10)


@dataclass
class Api:
    url: str
    token: str
    root: Path
    instance: str
    process: subprocess.Popen[bytes]

    @property
    def uploads(self) -> Path:
        return self.root / "uploads"

    def client(self, rsync_url: str, events: list[RetryEvent] | None = None) -> Flashpods:
        return Flashpods(
            self.url,
            self.token,
            rsync_url=rsync_url,
            on_retry=None if events is None else events.append,
            retry=RetryPolicy(),
            poll=PollSchedule(first=0.1, ceiling=0.5),
        )

    def containers(self) -> list[str]:
        out = podman("ps", "-aq", "--filter", f"label=flashpods-instance={self.instance}")
        return out.stdout.split()


@contextmanager
def flashpods_api(root: Path, podman_socket: Path, name: str, **extra: str) -> Iterator[Api]:
    root.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(32)
    (root / "api-token").write_text(token + "\n")
    (root / "api-token").chmod(0o600)
    port = free_port()
    instance = f"client-{name}-{RUN_ID}"
    env = {
        **os.environ,
        "FLASHPODS_DB_PATH": str(root / "db" / "flashpods.db"),
        "FLASHPODS_UPLOADS_PATH": str(root / "uploads"),
        "FLASHPODS_SNAPSHOTS_PATH": str(root / "snapshots"),
        "FLASHPODS_ARTIFACTS_PATH": str(root / "artifacts"),
        "FLASHPODS_LOGS_PATH": str(root / "logs"),
        "FLASHPODS_LISTEN_ADDR": f"127.0.0.1:{port}",
        "FLASHPODS_TOKEN_FILE": str(root / "api-token"),
        "FLASHPODS_PODMAN_SOCKET": str(podman_socket),
        "FLASHPODS_INSTANCE": instance,
        "FLASHPODS_DEFAULT_IMAGE": IMAGE,
        "FLASHPODS_PULL_POLICY": "never",
        "FLASHPODS_HOST_CPUS": "2",
        "FLASHPODS_HOST_MEMORY_GB": "8",
        "FLASHPODS_SPIRE_SOCKET_DIR": str(root / "no-spire"),
        "FLASHPODS_TOKEN_SOCKET": str(root / "no-token.sock"),
        "FLASHPODS_LOG_LEVEL": "info",
        **extra,
    }
    with (root / "api.log").open("wb") as log:
        process = subprocess.Popen(
            [str(BIN / "flashpods-api")], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    api = Api(f"http://127.0.0.1:{port}", token, root, instance, process)

    def healthy() -> bool:
        if process.poll() is not None:
            raise StackError(f"flashpods-api exited: {(root / 'api.log').read_text()[-2000:]}")
        try:
            return requests.get(api.url + "/health", timeout=2).status_code == 200
        except requests.RequestException:  # not listening yet, or still starting up
            return False

    try:
        wait_until(healthy, "flashpods-api")
        yield api
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        leftover = api.containers()
        if leftover:
            podman("rm", "-f", "-t", "0", *leftover)


@contextmanager
def rsync_daemon(home: Path, uploads: Path) -> Iterator[str]:
    """rsyncd from the deployment's settings, moved to 127.0.0.1:<port> and the API's
    uploads directory (and root, as the API here runs as root)."""
    deployment = values()
    settings = {k: dict(v) for k, v in deployment["rsyncd"].items()}
    module = deployment["rsync"]["module"]
    port = free_port()
    settings["global"].update({"address": "127.0.0.1", "hosts allow": "127.0.0.1"})
    settings[module].update({"path": str(uploads), "uid": "root", "gid": "root"})
    conf = home / "rsyncd.conf"
    conf.write_text(rsyncd.render(settings))
    daemon = subprocess.Popen(
        [
            "rsync",
            "--daemon",
            "--no-detach",
            f"--port={port}",
            f"--config={conf}",
            f"--log-file={home / 'log'}",
        ]
    )

    def listening() -> bool:
        if daemon.poll() is not None:
            raise StackError("rsync --daemon exited")
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_until(listening, "rsync --daemon")
        yield f"rsync://127.0.0.1:{port}/{module}"
    finally:
        daemon.terminate()
        daemon.wait(10)
