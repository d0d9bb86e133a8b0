"""Real podman for the API's runtime and service tests.

A private rootful `podman system service` on a temporary socket (the same remote-client
path the deployed API uses), the locally built job image, and a FLASHPODS_INSTANCE unique
to this test session, so nothing here touches the lab's or another run's containers.
Whatever the tests leave of their instance is removed at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from flashpods.api.runtime import JobSpec
from flashpods.api.runtime.podman import PodmanRuntime
from flashpods.common.polling import wait_until
from flashpods_testing.localhost import JOB_IMAGE, HostError, podman_service
from podman_support import INSTANCE, RecordingHooks, make_config, new_job_id, unpinned


@pytest.fixture(scope="session")
def podman_socket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    try:
        with podman_service(tmp_path_factory.mktemp("podman-service"), INSTANCE) as socket:
            yield socket
    except (HostError, TimeoutError) as exc:
        pytest.fail(str(exc), pytrace=False)


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
def hooks() -> Iterator[RecordingHooks]:
    recorded = RecordingHooks()
    yield recorded
    # A job's end goes on after its outcome (its pin released, then its container
    # removed, if podman is still there): no holder of a test's job outlives the test.
    for job_id in list(recorded.outcomes):
        wait_until(lambda job_id=job_id: unpinned(job_id), 60, f"the pin of {job_id}")


SpecFactory = Callable[..., JobSpec]


@pytest.fixture
def make_spec(dirs: Dirs) -> SpecFactory:
    def make(command: str | None = None, **overrides: object) -> JobSpec:
        job_id = str(overrides.pop("job_id", new_job_id()))
        values: dict[str, object] = {
            "job_id": job_id,
            "job_type": "worker",
            "image": JOB_IMAGE,
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
