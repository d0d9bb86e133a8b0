"""The client's local Flashpods host (no pytest in here), on top of
flashpods_testing.localhost: the real `flashpods-api` console script on
127.0.0.1:<free port> with its own instance label, and a real `rsync --daemon` whose
`uploads` module is the API's uploads directory, rendered from the deployment data like
the lab's and the host's. Each is a context manager that leaves nothing behind (process,
container); the podman service they drive is flashpods_testing.localhost.podman_service."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import flashpods
from flashpods.client.retry import RetryPolicy
from flashpods.client.sdk import Flashpods, PollSchedule, RetryEvent
from flashpods.common.polling import wait_until
from flashpods.deployment import values
from flashpods.lab import rsyncd
from flashpods_testing.localhost import (
    API_CONSOLE_SCRIPT,
    ApiProcess,
    HostError,
    free_port,
    instance_containers,
    local_api,
    remove_instance_containers,
)

BIN = Path(sys.executable).parent
RUN_ID = uuid.uuid4().hex[:8]


@dataclass
class Api:
    url: str
    token: str
    root: Path
    instance: str

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
        return instance_containers(self.instance)


@contextmanager
def flashpods_api(root: Path, podman_socket: Path, name: str, **extra: str) -> Iterator[Api]:
    """The console script with 2 CPUs / 8 GB of capacity; its containers go with it."""
    token, instance = secrets.token_hex(32), f"client-{name}-{RUN_ID}"
    settings = {
        "FLASHPODS_HOST_CPUS": "2",
        "FLASHPODS_HOST_MEMORY_GB": "8",
        "FLASHPODS_LOG_LEVEL": "info",
        **extra,
    }
    try:
        with local_api(
            ApiProcess, root, podman_socket, instance, token, command=API_CONSOLE_SCRIPT, **settings
        ) as process:
            yield Api(process.url, token, root, instance)
    finally:
        remove_instance_containers(instance)


def watch_program(bin_dir: Path) -> None:
    """flashpods-rsync-watch (the module's pre-xfer exec) for this checkout's code: the
    development venv's console scripts may predate it or point at another checkout."""
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "flashpods-rsync-watch"
    services = Path(flashpods.__file__).resolve().parents[1]
    script.write_text(
        f'#!/bin/sh\nPYTHONPATH={services} exec {sys.executable} -m flashpods.rsyncwatch "$@"\n'
    )
    script.chmod(0o755)


@contextmanager
def rsync_daemon(
    home: Path,
    uploads: Path,
    upload_max_bytes: int | None = None,
    upload_max_entries: int | None = None,
) -> Iterator[str]:
    """rsyncd from the deployment's settings, moved to 127.0.0.1:<port> and the API's
    uploads directory (and root, as the API here runs as root); `upload_max_bytes` and
    `upload_max_entries` replace the limits its pre-xfer exec (flashpods-rsync-watch
    LIMIT ENTRIES) holds uploads to."""
    deployment = values()
    settings = {k: dict(v) for k, v in deployment["rsyncd"].items()}
    module = deployment["rsync"]["module"]
    port = free_port()
    settings["global"].update({"address": "127.0.0.1", "hosts allow": "127.0.0.1"})
    settings[module].update({"path": str(uploads), "uid": "root", "gid": "root"})
    program, max_bytes, max_entries = settings[module]["pre-xfer exec"].split()
    settings[module]["pre-xfer exec"] = " ".join(
        [program, str(upload_max_bytes or max_bytes), str(upload_max_entries or max_entries)]
    )
    conf = home / "rsyncd.conf"
    conf.write_text(rsyncd.render(settings))
    watch_program(home / "bin")
    daemon = subprocess.Popen(
        [
            "rsync",
            "--daemon",
            "--no-detach",
            f"--port={port}",
            f"--config={conf}",
            f"--log-file={home / 'log'}",
        ],
        env={**os.environ, "PATH": f"{home / 'bin'}:{os.environ['PATH']}"},
    )

    def listening() -> bool:
        if daemon.poll() is not None:
            raise HostError("rsync --daemon exited")
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_until(listening, 20, "rsync --daemon")
        yield f"rsync://127.0.0.1:{port}/{module}"
    finally:
        daemon.terminate()
        daemon.wait(10)
