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
from flashpods.lab import lab
from flashpods.lab.services import default_inputs
from flashpods.lab.topology import Topology
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
def podman(topo: Topology, values: dict[str, Any]) -> Podman:
    user = pwd.getpwnam(values["user"])
    tools = default_inputs(Path("/"), Path("/")).tools_dir
    return Podman(
        topo.host_ns,
        values["apiEnvironment"]["FLASHPODS_PODMAN_SOCKET"],
        user.pw_uid,
        user.pw_gid,
        str(tools),
    )


@pytest.fixture(scope="session")
def laptop(topo: Topology) -> Iterator[Laptop]:
    lp = Laptop(topo)
    yield lp
    lp.close()
