"""The lab end to end, as root: the session brings the lab up once and takes it down
(the last module, test_zz_teardown, checks that `down` leaves nothing behind)."""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flashpods import deployment
from flashpods.api.runtime.podman_spec import ContainerUser
from flashpods.lab import lab
from flashpods.lab.proc import in_netns
from flashpods.lab.services import default_inputs
from flashpods.lab.topology import Topology
from flashpods_testing.job_containers import JobContainers, identity_mounts
from lab_helpers import Laptop, Podman


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tear-down checks run last (they take the lab down)."""
    items.sort(key=lambda item: "test_zz_teardown" in item.nodeid)


@pytest.fixture(scope="session")
def lab_up() -> Iterator[lab.UpReport]:
    if os.geteuid() != 0:
        pytest.fail("integration/lab needs root (it builds network namespaces)")
    try:
        report = lab.up()
        yield report
    finally:
        lab.down()  # also after a failed `up`: never leave half a lab behind


@pytest.fixture(scope="session")
def values() -> dict[str, Any]:
    return deployment.values()


@pytest.fixture(scope="session")
def topo(lab_up: lab.UpReport) -> Topology:
    return lab.topology()


@pytest.fixture(scope="session")
def podman(
    topo: Topology, values: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Podman:
    """The lab's podman, and job containers made on it as the lab's API makes them: as
    its user, with the mounts of its environment (instance label: lab-test)."""
    user = pwd.getpwnam(values["user"])
    api = values["apiEnvironment"]
    socket = api["FLASHPODS_PODMAN_SOCKET"]
    jobs = JobContainers(
        podman=tuple(in_netns(topo.host_ns, ["podman", "--url", f"unix://{socket}"])),
        socket=Path(socket),
        instance="lab-test",
        user=ContainerUser(rootless=False, uid=user.pw_uid, gid=user.pw_gid),
        mounts=identity_mounts(
            Path(api["FLASHPODS_SPIRE_SOCKET_DIR"]),
            Path(api["FLASHPODS_TOKEN_SOCKET"]),
            default_inputs(Path("/"), Path("/")).tools_dir,
        ),
    )
    return Podman(topo.host_ns, socket, jobs, tmp_path_factory.mktemp("lab-jobs"))


@pytest.fixture(scope="session")
def laptop(topo: Topology) -> Iterator[Laptop]:
    lp = Laptop(topo)
    yield lp
    lp.close()
