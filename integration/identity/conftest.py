"""Real SPIRE server + agent, a podman API service on our own socket, the token service,
and real containers of the job image. All of it in one temp directory, in the root
network namespace; the server on 127.0.0.1 on a free port. Set up once per session
(registration entries take ~10 s to reach the agent).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from flashpods_testing.identity_jobs import JOB_IMAGE, TEST_UID, Containers, wait_until_issued
from flashpods_testing.identity_stack import IdentityStack


def _require(condition: bool, message: str) -> None:
    if not condition:
        pytest.fail(message, pytrace=False)


@pytest.fixture(scope="session")
def identity() -> Iterator[Containers]:
    _require(os.geteuid() == 0, "integration/identity needs root (rootful podman, SPIRE agent)")
    _require(shutil.which("podman") is not None, "podman is missing: run scripts/setup.sh")
    _require(
        subprocess.run(["podman", "image", "exists", JOB_IMAGE]).returncode == 0,
        f"{JOB_IMAGE} is missing: run scripts/build-image.sh",
    )
    # Containers run as this uid:gid, like the API runs them as the flashpods user; a
    # numeric id needs no passwd entry, so the tests do not depend on the lab's user.
    uid, gid = TEST_UID, TEST_UID
    # Short base path: unix socket paths are limited to 107 bytes.
    base = Path(tempfile.mkdtemp(prefix="fpid-", dir="/tmp"))
    os.chmod(base, 0o755)
    stack = IdentityStack(
        base=base,
        workload_uid=uid,
        workload_gid=gid,
        secrets={
            "anthropic_api_key": "sk-ant-test-" + secrets.token_hex(16),
            "github_token": "ghp_test" + secrets.token_hex(16),
        },
    )
    containers = Containers(
        stack, uid, gid, instance=f"identity-test-{uuid.uuid4().hex[:8]}", scratch=base / "jobs"
    )
    try:
        stack.start()
        wait_until_issued(containers)
        yield containers
    finally:
        containers.remove_all()
        stack.close()
        stack.remove()
