"""The client against the real thing (client_stack.py): `flashpods-api` as a process
driving a private rootful podman service, and rsyncd serving its uploads directory.
Every test talks to them the way a laptop does: HTTP with the bearer token and rsync://.

Two APIs share the podman service under different FLASHPODS_INSTANCE labels: the main
one (2 CPUs of capacity, so a 2-CPU job fills the host), and one with a tiny rate limit.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TypeVar

import pytest
from client_stack import Api, flashpods_api, rsync_daemon
from flashpods_testing.localhost import HostError, podman_service

T = TypeVar("T")


def _enter(manager: AbstractContextManager[T]) -> Iterator[T]:
    try:
        with manager as value:
            yield value
    except (HostError, TimeoutError) as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def podman_socket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield from _enter(podman_service(tmp_path_factory.mktemp("podman")))


@pytest.fixture(scope="session")
def api(tmp_path_factory: pytest.TempPathFactory, podman_socket: Path) -> Iterator[Api]:
    yield from _enter(flashpods_api(tmp_path_factory.mktemp("api"), podman_socket, "main"))


@pytest.fixture(scope="session")
def limited_api(tmp_path_factory: pytest.TempPathFactory, podman_socket: Path) -> Iterator[Api]:
    """Two requests per second, burst 2: the third quick request is rate limited."""
    yield from _enter(
        flashpods_api(
            tmp_path_factory.mktemp("api-limited"),
            podman_socket,
            "limited",
            FLASHPODS_RATE_LIMIT_PER_SECOND="2",
            FLASHPODS_RATE_LIMIT_BURST="2",
        )
    )


@pytest.fixture(scope="session")
def rsync_url(tmp_path_factory: pytest.TempPathFactory, api: Api) -> Iterator[str]:
    yield from _enter(rsync_daemon(tmp_path_factory.mktemp("rsyncd"), api.uploads))


@pytest.fixture
def client_env(api: Api, rsync_url: str, tmp_path: Path) -> dict[str, str]:
    """What a laptop's shell has: the token and where the host is, nothing else (but
    PYTHONPATH, so a checkout other than the editable install's tests its own code)."""
    return {
        **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"},
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path / "home"),
        "FLASHPODS_API_TOKEN": api.token,
        "FLASHPODS_HOST": "127.0.0.1",
        "FLASHPODS_PORT": api.url.rsplit(":", 1)[1],
        "FLASHPODS_RSYNC_URL": rsync_url,
    }


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A small project folder as a laptop has one, with things the upload leaves out."""
    root = tmp_path / "project"
    (root / "src").mkdir(parents=True)
    (root / "src" / "data.txt").write_text("hello from the laptop\n")
    (root / "run.sh").write_text("cat /work/src/data.txt\n")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / "node_modules" / "x").mkdir(parents=True)
    return root
