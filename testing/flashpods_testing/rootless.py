"""Rootless podman as a given user, set up and removed by a test (NixOS runs jobs so).

A user gets subordinate id ranges, its own podman configuration and storage under a
scratch HOME (podman finds both through HOME and the XDG variables, so the user's real
home is never touched), and the job image copied from root's storage. Two kinds of
user: a throwaway system user the test creates (`created=True`: removed with everything
of its uid), or an existing one such as the lab's service user, whose other processes
and files (the API's) must survive: then only what this set-up started or made is
removed — processes whose environment names the scratch HOME and their descendants,
scratch entries that appeared after set-up, and the subid lines it added.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from flashpods.common.polling import poll, wait_until
from flashpods.deployment import JOB_IMAGE

from flashpods_testing.localhost import HostError, stop_process

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


def _parent(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("PPid:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _environ_has(pid: int, needle: bytes) -> bool:
    try:
        return needle in Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False


def marked_pids(uid: int, marker: str) -> list[int]:
    """Processes of `uid` whose environment contains `marker` (podman, its pause
    process, conmon, slirp4netns all inherit the scratch HOME/XDG_RUNTIME_DIR), and
    every descendant of those (the containers' own processes have the image's env)."""
    candidates = user_pids(uid)
    roots = {pid for pid in candidates if _environ_has(pid, marker.encode())}
    found = set(roots)
    for pid in candidates:
        ancestor = _parent(pid)
        while ancestor > 1 and ancestor not in found:
            ancestor = _parent(ancestor)
        if ancestor in found:
            found.add(pid)
    return sorted(found)


def _owned_entries(uid: int) -> set[Path]:
    entries = set()
    for scratch in SCRATCH_DIRS:
        for entry in scratch.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if entry.lstat().st_uid == uid:
                    entries.add(entry)
    return entries


def _remove_entry(entry: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


@dataclass
class RootlessUser:
    """A user with subordinate ids and everything podman needs under `home` (scratch)."""

    name: str
    home: Path
    created: bool = True  # False: an existing user, only borrowed
    subids: tuple[int, int] = field(default=(0, 0))
    uid: int = -1
    gid: int = -1
    service: subprocess.Popen[bytes] | None = None
    _scratch_before: set[Path] = field(default_factory=set)

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
            "XDG_CONFIG_HOME": str(self.home / ".config"),
            "XDG_DATA_HOME": str(self.home / ".local" / "share"),
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
        if self.created:
            home = ["--create-home", "--home-dir", str(self.home), "--shell", "/usr/sbin/nologin"]
            run(["useradd", "--system", "--user-group", *home, self.name])
        entry = pwd.getpwnam(self.name)
        self.uid, self.gid = entry.pw_uid, entry.pw_gid
        self._scratch_before = _owned_entries(self.uid)
        first, last = free_subid_range()
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
        self.subids = (first, last)
        self.home.mkdir(mode=0o700, exist_ok=True)
        for sub in ("run", "tmp", ".config/containers", ".local/share"):
            (self.home / sub).mkdir(parents=True, mode=0o700, exist_ok=True)
        (self.home / ".config/containers/containers.conf").write_text(CONTAINERS_CONF)
        (self.home / ".config/containers/storage.conf").write_text(STORAGE_CONF)
        self.chown()

    def chown(self) -> None:
        """Everything under `home` to the user (after a test put files there as root)."""
        run(["chown", "-R", f"{self.uid}:{self.gid}", str(self.home)])

    def load_image(self, image: str = JOB_IMAGE) -> None:
        """`image` from root's storage into the user's (save | load, no registry)."""
        save = subprocess.Popen(
            ["podman", "save", "--format", "docker-archive", image],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            load = self.argv("podman", "load", "--quiet")
            run(load, env=self.env(), cwd=self.home, stdin=save.stdout, timeout=180)
        finally:
            assert save.stdout is not None
            save.stdout.close()
            save.wait(30)
        if save.returncode != 0:
            raise HostError(
                f"podman save {image}: {save.stderr.read().decode() if save.stderr else ''}"
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
                stop_process(self.service, 10)
            for command in (
                ("podman", "rm", "--all", "--force", "--time", "0"),
                ("podman", "system", "reset", "--force"),
            ):
                subprocess.run(
                    self.argv(*command),
                    env=self.env(),
                    cwd=self.home if self.home.is_dir() else "/",
                    capture_output=True,
                    check=False,
                    timeout=60,
                )
            self._kill_processes()
            for entry in _owned_entries(self.uid) - self._scratch_before:
                _remove_entry(entry)
        shutil.rmtree(self.home, ignore_errors=True)
        if self.subids != (0, 0):
            line = f"{self.name}:{self.subids[0]}:{SUBID_COUNT}"
            for path in SUBID_FILES:
                _drop_line(path, line)
                if line in path.read_text().splitlines():
                    problems.append(f"{path} still lists {line}")
        if self.created:
            subprocess.run(["userdel", self.name], capture_output=True, check=False)
            if any(p.pw_name == self.name for p in pwd.getpwall()):
                problems.append(f"user {self.name} still exists")
        if self.home.exists():
            problems.append(f"{self.home} still exists")
        if self.uid >= 0 and self._ours():
            problems.append(f"processes of uid {self.uid} still run: {self._ours()}")
        return problems

    def _ours(self) -> list[int]:
        if self.created:
            return user_pids(self.uid)
        return marked_pids(self.uid, f"={self.home}")

    def _kill_processes(self) -> None:
        """The rootless pause process (holder of the user namespace), conmons and
        slirp4netns outlive podman; a created user's are all its uid's, a borrowed
        user's only those of this set-up."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            _signal(self._ours(), sig)
            poll(lambda: not self._ours(), 5)


def _drop_line(path: Path, line: str) -> None:
    """`path` without `line`, replaced atomically. Not `usermod --del-subuids`: it
    refuses while the user has processes (shadow's user_busy check), and a borrowed user
    (the lab's API) always has."""
    lines = path.read_text().splitlines(keepends=True)
    kept = [entry for entry in lines if entry.rstrip("\n") != line]
    if kept == lines:
        return
    temporary = path.with_name(f".{path.name}.fp-{os.getpid()}")
    temporary.write_text("".join(kept))
    os.chmod(temporary, path.stat().st_mode & 0o7777)
    os.replace(temporary, path)


def _signal(pids: Iterable[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
