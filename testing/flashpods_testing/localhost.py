"""A single-machine Flashpods host for tests and benchmarks.

The pieces the real-component tests (integration/api, integration/client,
integration/identity) and the bench/ scripts share, with no pytest in here:

- `free_port()`;
- `PodmanService` / `podman_service()`: a private rootful `podman system service` on
  `<home>/podman.sock`, and on exit the removal of whatever a FLASHPODS_INSTANCE left;
- `api_environment()` and `ApiProcess`: a real `flashpods-api` against temporary
  directories on 127.0.0.1:<free port>, started as a subprocess, healthy when /health says so;
  `local_api()` the three steps in one (token file, environment, process);
- `bench_host()`: for bench/, a temporary directory with a podman service and an API on it.

Each caller passes its own instance label, so runs never touch the lab's or each other's
containers. The lab itself runs at the real paths and does not use this.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import requests
from flashpods.api.runtime import artifactpin
from flashpods.common.polling import wait_until
from flashpods.common.programs import ProgramFailure, run_program
from flashpods.deployment import JOB_IMAGE

# The API as `python -m`: the interpreter running the caller, so the same venv's code.
API_MODULE_COMMAND = (sys.executable, "-m", "flashpods.api.main")
# The console script as installed next to that interpreter (what a host runs).
API_CONSOLE_SCRIPT = (str(Path(sys.executable).with_name("flashpods-api")),)


class HostError(Exception):
    """A piece of the local host is missing or did not come up (the message says why)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def as_assertion(failure: ProgramFailure) -> AssertionError:
    """A program a test relies on failed: the test fails, saying what it said."""
    return AssertionError(f"{failure.command} failed ({failure.reason}): {failure.output}")


def podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The machine's podman (not a private service); its exit status is the caller's to judge."""
    return run_program(["podman", *args], fail=as_assertion, check=False, timeout=timeout)


def require_podman(image: str = JOB_IMAGE) -> None:
    if shutil.which("podman") is None:
        raise HostError("podman is not installed: run scripts/setup.sh")
    if podman("image", "exists", image).returncode != 0:
        raise HostError(f"{image} is missing: run scripts/build-image.sh")


def instance_containers(instance: str) -> list[str]:
    """IDs of every container (any state) labelled with this FLASHPODS_INSTANCE."""
    return podman("ps", "-aq", "--filter", f"label=flashpods-instance={instance}").stdout.split()


def remove_instance_containers(instance: str) -> None:
    """Remove them, and the holders of their pinned /artifacts (which outlive the API)."""
    leftover = instance_containers(instance)
    if leftover:
        names = podman("inspect", "--format", "{{.Name}}", *leftover).stdout.split()
        podman("rm", "--force", "--ignore", "--time", "0", *leftover)
        for name in names:
            artifactpin.release(name.removeprefix("job_"))


def stop_process(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, then SIGKILL if it is still there after `timeout` seconds."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


@dataclass
class PodmanService:
    """`podman system service --time=0 unix://<home>/podman.sock`, run from `home`:
    conmon 2.1 drops its `oom` flag file into its working directory. Output goes to
    `log` if given, else nowhere. Can be killed and started again (same socket)."""

    home: Path
    log: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def socket(self) -> Path:
        return self.home / "podman.sock"

    def start(self, timeout: float = 20) -> Path:
        # A killed service leaves its socket file behind: waiting for it would not wait.
        self.socket.unlink(missing_ok=True)
        with open(self.log or os.devnull, "ab") as out:
            process = subprocess.Popen(
                ["podman", "system", "service", "--time=0", f"unix://{self.socket}"],
                cwd=self.home,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.process = process

        def up() -> bool:
            if process.poll() is not None:
                raise HostError(f"podman system service exited with {process.returncode}")
            return self.socket.exists()

        try:
            wait_until(up, timeout, "podman system service")
        except BaseException:
            self.kill()
            raise
        return self.socket

    def kill(self) -> None:
        """SIGKILL, as a crash would: conmon keeps the containers running."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, 10)
            self.process = None


@contextmanager
def podman_service(home: Path, instance: str | None = None) -> Iterator[Path]:
    """A private podman service for the job image; yields its socket. On exit, the
    containers labelled `instance` (if given) are removed before the service stops."""
    require_podman()
    service = PodmanService(home)
    service.start()
    try:
        yield service.socket
    finally:
        if instance is not None:
            remove_instance_containers(instance)
        service.stop()


def write_token(path: Path, token: str) -> None:
    """The API's bearer token file, root-only like on a host."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(token + "\n")
    path.chmod(0o600)


def api_environment(
    root: Path, podman_socket: Path, instance: str, **overrides: str
) -> dict[str, str]:
    """FLASHPODS_* for an API keeping everything under `root` (token file:
    `root/api-token`, see write_token), listening on 127.0.0.1:<free port>, running the
    local job image without pulling, with SPIRE and token sockets that do not exist (so
    those mounts are skipped). `overrides` (full variable names) win, e.g.
    FLASHPODS_HOST_CPUS, FLASHPODS_RATE_LIMIT_PER_SECOND, FLASHPODS_LOG_LEVEL."""
    env = {
        "FLASHPODS_DB_PATH": str(root / "db" / "flashpods.db"),
        "FLASHPODS_UPLOADS_PATH": str(root / "uploads"),
        "FLASHPODS_SNAPSHOTS_PATH": str(root / "snapshots"),
        "FLASHPODS_ARTIFACTS_PATH": str(root / "artifacts"),
        "FLASHPODS_LOGS_PATH": str(root / "logs"),
        "FLASHPODS_LISTEN_ADDR": f"127.0.0.1:{free_port()}",
        "FLASHPODS_TOKEN_FILE": str(root / "api-token"),
        "FLASHPODS_PODMAN_SOCKET": str(podman_socket),
        "FLASHPODS_INSTANCE": instance,
        "FLASHPODS_DEFAULT_IMAGE": JOB_IMAGE,
        "FLASHPODS_PULL_POLICY": "never",
        "FLASHPODS_SPIRE_SOCKET_DIR": str(root / "no-spire"),
        "FLASHPODS_TOKEN_SOCKET": str(root / "no-token.sock"),
    }
    env.update(overrides)
    return env


@dataclass
class ApiProcess:
    """`flashpods-api` as a subprocess with `env` over this process's environment, its
    output appended to `root/api.log`. start() returns once /health answers 200;
    kill() is a crash (SIGKILL), stop() a clean shutdown; it can be started again."""

    root: Path
    env: dict[str, str]
    command: Sequence[str] = API_MODULE_COMMAND
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"http://{self.env['FLASHPODS_LISTEN_ADDR']}"

    @property
    def instance(self) -> str:
        return self.env["FLASHPODS_INSTANCE"]

    @property
    def log_path(self) -> Path:
        return self.root / "api.log"

    def start(self, timeout: float = 20) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                list(self.command),
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_until(self._healthy, timeout, "flashpods-api health")
        except BaseException:
            self.stop()
            raise

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise HostError(f"flashpods-api exited with {self.proc.returncode}: {tail}")
        try:
            return requests.get(f"{self.url}/health", timeout=2).status_code == 200
        except requests.RequestException:  # not listening yet, or still starting up
            return False

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def stop(self, timeout: float = 30) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout)
            self.proc = None


@contextmanager
def api_process(
    root: Path, env: dict[str, str], command: Sequence[str] = API_MODULE_COMMAND
) -> Iterator[ApiProcess]:
    """A started ApiProcess, stopped on exit."""
    api = ApiProcess(root, env, command)
    api.start()
    try:
        yield api
    finally:
        api.stop()


P = TypeVar("P", bound=ApiProcess)


@contextmanager
def local_api(
    process: type[P],
    root: Path,
    podman_socket: Path,
    instance: str,
    token: str,
    *,
    command: Sequence[str] = API_MODULE_COMMAND,
    **overrides: str,
) -> Iterator[P]:
    """`flashpods-api` (`command`) as a started `process` with everything under `root`
    (api_environment, `overrides` winning) and `token` in its token file; stopped on exit."""
    write_token(root / "api-token", token)
    api = process(root, api_environment(root, podman_socket, instance, **overrides), command)
    api.start()
    try:
        yield api
    finally:
        api.stop()


@contextmanager
def bench_host(token: str, **overrides: str) -> Iterator[tuple[ApiProcess, Path]]:
    """For bench/: in a temporary directory, a private podman service and `flashpods-api`
    on it (rate limit off, warnings only; `overrides` win). Yields the API and the podman
    socket; on exit the instance's containers, the processes and the directory go."""
    with tempfile.TemporaryDirectory(prefix="flashpods-bench-") as tmp:
        root = Path(tmp)
        instance = f"bench-{os.getpid()}"
        settings = {
            "FLASHPODS_RATE_LIMIT_PER_SECOND": "0",
            "FLASHPODS_LOG_LEVEL": "warning",
            **overrides,
        }
        with (
            podman_service(root, instance) as sock,
            local_api(ApiProcess, root, sock, instance, token, **settings) as api,
        ):
            yield api, sock
