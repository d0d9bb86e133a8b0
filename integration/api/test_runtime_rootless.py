"""PodmanRuntime against ROOTLESS podman, the way NixOS deploys it (`--userns=keep-id`).

The rest of integration/api drives a rootful podman service. Here a throwaway system
user gets subordinate id ranges, the job image in its own storage and its own
`podman system service`; `rootless_job.py` then runs AS that user (Debian's python3 on a
copy of the runtime's sources: the development venv's interpreter lives under /root)
and reports in JSON what its PodmanRuntime saw. Everything (containers, service,
storage, user, subuid/subgid lines) is removed afterwards, also when the test fails.

On cgroup v1 rootless podman has no cgroup of its own (lab.md): memory/CPU limits and
OOM detection are not part of what this proves.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from flashpods_testing.localhost import HostError, require_podman
from flashpods_testing.rootless import RootlessUser
from podman_support import INSTANCE, strip_prefix

pytestmark = [pytest.mark.podman, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
JOB_SCRIPT = Path(__file__).with_name("rootless_job.py")
SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.fixture(scope="module")
def rootless_user() -> Iterator[RootlessUser]:
    name = f"fprootless-{uuid.uuid4().hex[:8]}"
    # Not under $TMPDIR or pytest's tmp_path: their parents may be closed to other users.
    user = RootlessUser(name, Path("/var/tmp") / name)
    try:
        require_podman()
        user.create()
        # The runtime's sources and the job script, readable whatever the checkout's parents.
        shutil.copytree(
            REPO / "services" / "flashpods",
            user.home / "src" / "flashpods",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        shutil.copy(JOB_SCRIPT, user.home / "src" / JOB_SCRIPT.name)
        (user.home / "jobs").mkdir()
        user.chown()
        user.load_image()
        user.start_service()
    except BaseException as exc:
        problems = user.remove()
        if isinstance(exc, HostError | TimeoutError | subprocess.TimeoutExpired):
            pytest.fail(f"rootless podman set-up failed: {exc} {problems or ''}", pytrace=False)
        raise
    yield user
    problems = user.remove()
    assert not problems, f"rootless tear-down left: {problems}"


def test_runtime_runs_jobs_rootless_with_keep_id(rootless_user: RootlessUser) -> None:
    user = rootless_user
    done = user.run(
        SYSTEM_PYTHON,
        str(user.home / "src" / JOB_SCRIPT.name),
        str(user.socket),
        str(user.home / "jobs"),
        INSTANCE,
        timeout=120,
    )
    report = json.loads(done.stdout)
    uid, gid = report["uid"], report["gid"]
    assert (uid, gid) == (user.uid, user.gid)

    # The runtime asked podman and chose keep-id; podman applied it to the container: the
    # user's uid inside is the user's uid on the host, root inside is a subordinate id,
    # and PID 1 runs as the user.
    assert report["rootless"] is True
    assert report["user_body"] == {"userns": {"nsmode": "keep-id"}}
    container = report["running_container"]
    assert f"{uid}:0:1" in container["id_mappings"]["UidMap"]
    assert f"{gid}:0:1" in container["id_mappings"]["GidMap"]
    uid_map = {
        int(inside): (int(outside), int(count)) for inside, outside, count in container["uid_map"]
    }
    assert uid_map[uid] == (uid, 1)
    assert uid_map[0][0] >= user.subids[0]  # the container's root is a subordinate id
    assert container["pid1_host_uid"] == user.uid

    jobs = report["jobs"]
    failing = jobs["failing"]
    assert (failing["status"], failing["exit_code"], failing["error"]) == ("failed", 3, None)
    # Both streams, each line with its [HH:MM:SS.mmm] timestamp, in order.
    assert [strip_prefix(line) for line in failing["log"]] == ["to-stdout", "to-stderr"]
    assert all(line[0] == "[" and line[13:15] == "] " for line in failing["log"])

    files = jobs["files"]
    assert (files["status"], files["exit_code"]) == ("completed", 0)
    assert [strip_prefix(line) for line in files["log"]] == [
        f"ids={uid}:{gid}",  # keep-id: the container runs as the user's own ids
        "from the snapshot",
        "work=read-only",
    ]
    assert report["upload_entries"] == ["input.txt"]  # nothing written through /work
    assert files["artifacts"] == ["result.txt", "sub/n"]
    artifacts = Path(files["artifacts_dir"])
    assert (artifacts / "result.txt").read_text() == "payload\n"
    for path in (artifacts / "result.txt", artifacts / "sub", artifacts / "sub" / "n"):
        owner = path.stat()
        assert (owner.st_uid, owner.st_gid) == (user.uid, user.gid), path

    cancelled = jobs["cancelled"]
    assert (cancelled["status"], cancelled["exit_code"]) == ("cancelled", 143)
    assert [strip_prefix(line) for line in cancelled["log"]] == ["running"]

    assert report["left_containers"] == []
    left = subprocess.run(
        ["podman", "--url", f"unix://{user.socket}", "ps", "--all", "--quiet"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert left.stdout.split() == []
