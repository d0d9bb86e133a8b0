"""Real podman for the API's runtime and service tests.

A private rootful `podman system service` on a temporary socket (the same remote-client
path the deployed API uses), the locally built job image, and a FLASHPODS_INSTANCE unique
to this test session, so nothing here touches the lab's or another run's containers.
Whatever the tests leave of their instance is removed at the end.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from flashpods.api.runtime import JobSpec
from flashpods.api.runtime.podman import PodmanRuntime
from podman_support import IMAGE, INSTANCE, RecordingHooks, make_config, new_job_id


def _require_podman() -> None:
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed: run scripts/setup.sh", pytrace=False)
    probe = subprocess.run(["podman", "image", "exists", IMAGE], check=False)
    if probe.returncode != 0:
        pytest.fail(f"{IMAGE} is missing: run scripts/build-image.sh", pytrace=False)


@pytest.fixture(scope="session")
def podman_socket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    _require_podman()
    home = tmp_path_factory.mktemp("podman-service")
    socket = home / "podman.sock"
    # cwd: conmon 2.1 drops its `oom` flag file into its working directory.
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{socket}"],
        cwd=home,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 15
    while not socket.exists():
        if service.poll() is not None or time.monotonic() > deadline:
            service.kill()
            pytest.fail("podman system service did not come up", pytrace=False)
        time.sleep(0.05)
    yield socket
    leftover = subprocess.run(
        ["podman", "ps", "-aq", "--filter", f"label=flashpods-instance={INSTANCE}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    if leftover:
        subprocess.run(
            ["podman", "rm", "--force", "--ignore", "--time", "0", *leftover],
            capture_output=True,
            check=False,
        )
    service.terminate()
    service.wait(10)


@pytest.fixture(scope="session")
def instance() -> str:
    return INSTANCE


@dataclass
class Dirs:
    root: Path
    artifacts: Path
    logs: Path
    uploads: Path


@pytest.fixture
def dirs(tmp_path: Path) -> Dirs:
    made = Dirs(tmp_path, tmp_path / "artifacts", tmp_path / "logs", tmp_path / "snapshots")
    for path in (made.artifacts, made.logs, made.uploads):
        path.mkdir()
    return made


@pytest.fixture
def runtime(podman_socket: Path) -> Iterator[PodmanRuntime]:
    rt = PodmanRuntime(make_config(podman_socket))
    yield rt
    rt.shutdown()


@pytest.fixture
def hooks() -> RecordingHooks:
    return RecordingHooks()


SpecFactory = Callable[..., JobSpec]


@pytest.fixture
def make_spec(dirs: Dirs) -> SpecFactory:
    def make(command: str | None = None, **overrides: object) -> JobSpec:
        job_id = str(overrides.pop("job_id", new_job_id()))
        values: dict[str, object] = {
            "job_id": job_id,
            "job_type": "worker",
            "image": IMAGE,
            "cpus": 1,
            "memory_gb": 1,
            "timeout_minutes": 5,
            "artifacts_dir": dirs.artifacts / job_id,
            "log_path": dirs.logs / f"{job_id}.log",
            "command": command,
        }
        values.update(overrides)
        return JobSpec(**values)  # type: ignore[arg-type]

    return make
