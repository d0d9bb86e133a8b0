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

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest
from flashpods.common.polling import poll, wait_until
from flashpods_testing.localhost import (
    JOB_IMAGE,
    HostError,
    require_podman,
    stop_process,
)
from podman_support import INSTANCE, strip_prefix

pytestmark = [pytest.mark.podman, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
JOB_SCRIPT = Path(__file__).with_name("rootless_job.py")
SYSTEM_PYTHON = "/usr/bin/python3"
SUBID_FILES = (Path("/etc/subuid"), Path("/etc/subgid"))
SUBID_FIRST = 100000
SUBID_COUNT = 65536
# Where podman and its helpers may leave files of the user outside its home.
SCRATCH_DIRS = (Path("/dev/shm"), Path("/tmp"), Path("/var/tmp"))
# Rootless on this cgroup-v1 host: no systemd user session, no cgroup delegation, no
# journald; on NixOS (cgroup v2, systemd) podman's defaults apply instead.
CONTAINERS_CONF = """\
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
"""
# Native rootless overlay (kernel >= 5.13); podman 4.3 would otherwise pick vfs here,
# which copies the whole image for every container (seconds per job start).
STORAGE_CONF = """\
[storage]
driver = "overlay"
"""


def run(
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    stdin: IO[bytes] | int | None = subprocess.DEVNULL,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run; HostError with the command's own words (stderr) if it fails."""
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd=cwd,
        stdin=stdin,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise HostError(f"{' '.join(argv[:4])} … exited {result.returncode}: {result.stderr}")
    return result


def free_subid_range() -> tuple[int, int]:
    """The first SUBID_COUNT ids above every range /etc/subuid and /etc/subgid hand out."""
    first = SUBID_FIRST
    for path in SUBID_FILES:
        for line in path.read_text().splitlines() if path.exists() else []:
            parts = line.split(":")
            if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                first = max(first, int(parts[1]) + int(parts[2]))
    return first, first + SUBID_COUNT - 1


def user_pids(uid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    pids.append(int(entry.name))
            except FileNotFoundError:  # exited meanwhile
                continue
    return pids


@dataclass
class RootlessUser:
    """A system user with subordinate ids and everything podman needs in its home."""

    name: str
    home: Path
    subids: tuple[int, int] = field(default=(0, 0))
    uid: int = -1
    gid: int = -1
    service: subprocess.Popen[bytes] | None = None

    @property
    def runtime_dir(self) -> Path:
        return self.home / "run"

    @property
    def socket(self) -> Path:
        return self.runtime_dir / "podman.sock"

    def env(self) -> dict[str, str]:
        return {
            "HOME": str(self.home),
            "USER": self.name,
            "LOGNAME": self.name,
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
            "TMPDIR": str(self.home / "tmp"),
            "PYTHONPATH": str(self.home / "src"),
            "PYTHONDONTWRITEBYTECODE": "1",
        }

    def argv(self, *command: str) -> list[str]:
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups", *command]

    def run(self, *command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return run(self.argv(*command), env=self.env(), cwd=self.home, timeout=timeout)

    # ---- set-up ---------------------------------------------------------------------

    def create(self) -> None:
        home = ["--create-home", "--home-dir", str(self.home), "--shell", "/usr/sbin/nologin"]
        run(["useradd", "--system", "--user-group", *home, self.name])
        entry = pwd.getpwnam(self.name)
        self.uid, self.gid = entry.pw_uid, entry.pw_gid
        first, last = self.subids = free_subid_range()
        run(
            [
                "usermod",
                "--add-subuids",
                f"{first}-{last}",
                "--add-subgids",
                f"{first}-{last}",
                self.name,
            ]
        )
        for sub in ("run", "tmp", ".config/containers"):
            (self.home / sub).mkdir(parents=True, mode=0o700)
        (self.home / ".config/containers/containers.conf").write_text(CONTAINERS_CONF)
        (self.home / ".config/containers/storage.conf").write_text(STORAGE_CONF)
        # The runtime's sources and the job script, readable whatever the checkout's parents.
        shutil.copytree(
            REPO / "services" / "flashpods",
            self.home / "src" / "flashpods",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        shutil.copy(JOB_SCRIPT, self.home / "src" / JOB_SCRIPT.name)
        (self.home / "jobs").mkdir()
        run(["chown", "-R", f"{self.uid}:{self.gid}", str(self.home)])

    def load_image(self) -> None:
        save = subprocess.Popen(
            ["podman", "save", "--format", "docker-archive", JOB_IMAGE],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            load = self.argv("podman", "load", "--quiet")
            run(load, env=self.env(), cwd=self.home, stdin=save.stdout, timeout=120)
        finally:
            assert save.stdout is not None
            save.stdout.close()
            save.wait(30)
        if save.returncode != 0:
            raise HostError(
                f"podman save {JOB_IMAGE}: {save.stderr.read().decode() if save.stderr else ''}"
            )

    def start_service(self) -> None:
        with (self.home / "service.log").open("ab") as log:
            self.service = subprocess.Popen(
                self.argv("podman", "system", "service", "--time=0", f"unix://{self.socket}"),
                env=self.env(),
                cwd=self.home,  # conmon drops its `oom` flag file into its working dir
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        service = self.service

        def up() -> bool:
            if service.poll() is not None:
                log_text = (self.home / "service.log").read_text(errors="replace")
                raise HostError(f"rootless podman service exited {service.returncode}: {log_text}")
            return self.socket.exists()

        wait_until(up, 20, "the rootless podman service")

    # ---- tear-down (each step tolerates what an earlier failure left undone) ---------

    def remove(self) -> list[str]:
        """Remove everything; returns what could not be removed (empty when clean)."""
        problems: list[str] = []
        if self.uid >= 0:
            if self.service is not None and self.service.poll() is None:
                subprocess.run(
                    [
                        "podman",
                        "--url",
                        f"unix://{self.socket}",
                        "rm",
                        "--all",
                        "--force",
                        "--time",
                        "0",
                    ],
                    capture_output=True,
                    check=False,
                    timeout=60,
                )
                stop_process(self.service, 10)
            subprocess.run(
                self.argv("podman", "system", "reset", "--force"),
                env=self.env(),
                cwd=self.home,
                capture_output=True,
                check=False,
                timeout=60,
            )
            self._kill_processes()
            for scratch in SCRATCH_DIRS:
                for entry in scratch.iterdir():
                    # FileNotFoundError: someone else's file that went meanwhile.
                    with contextlib.suppress(FileNotFoundError):
                        if entry.lstat().st_uid != self.uid:
                            continue
                        if entry.is_dir() and not entry.is_symlink():
                            shutil.rmtree(entry)
                        else:
                            entry.unlink()
        shutil.rmtree(self.home, ignore_errors=True)
        if self.subids != (0, 0):
            first, last = self.subids
            ranges = ["--del-subuids", f"{first}-{last}", "--del-subgids", f"{first}-{last}"]
            subprocess.run(["usermod", *ranges, self.name], capture_output=True, check=False)
        subprocess.run(["userdel", self.name], capture_output=True, check=False)
        if any(p.pw_name == self.name for p in pwd.getpwall()):
            problems.append(f"user {self.name} still exists")
        for path in SUBID_FILES:
            if any(line.startswith(f"{self.name}:") for line in path.read_text().splitlines()):
                problems.append(f"{path} still lists {self.name}")
        if self.home.exists():
            problems.append(f"{self.home} still exists")
        if self.uid >= 0 and user_pids(self.uid):
            problems.append(f"processes of uid {self.uid} still run: {user_pids(self.uid)}")
        return problems

    def _kill_processes(self) -> None:
        """The rootless pause process (holder of the user namespace), conmons and
        slirp4netns of the user outlive its service; they all belong to this user."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in user_pids(self.uid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            poll(lambda: not user_pids(self.uid), 5)


@pytest.fixture(scope="module")
def rootless_user() -> Iterator[RootlessUser]:
    name = f"fprootless-{uuid.uuid4().hex[:8]}"
    # Not under $TMPDIR or pytest's tmp_path: their parents may be closed to other users.
    user = RootlessUser(name, Path("/var/tmp") / name)
    try:
        require_podman()
        user.create()
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
    assert report["user_args"] == ["--userns=keep-id"]
    container = report["running_container"]
    assert "--userns=keep-id" in container["create_command"]
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
