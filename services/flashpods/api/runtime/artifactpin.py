"""The pin that keeps a job's /artifacts readable after its container is gone.

/artifacts is a size-limited tmpfs inside the container (podman_spec.scratch_mounts), so
the kernel bounds it while the job runs; it dies with the container's mount namespace
unless something holds it. The job's command waits on a gate (a FIFO, podman_spec
GATE_TARGET) while the runtime opens the tmpfs through the container's PID 1 (`podman
init`'s process would be earlier, but in rootful podman it is root's until it execs, so
the API's user may not look into it) by descriptor (`/proc/<pid>/root/artifacts`, never
following a symlink) and hands it to a holder: a `sleep` process whose working directory
it is; then the gate opens.
The holder is a session of its own, so it outlives an API restart (the NixOS unit's
KillMode=process leaves it too); the collector reopens the tmpfs through
`/proc/<holder>/cwd`, and the holder is killed once the artifacts are copied out or the
container is removed. A holder is found by its environment (PIN_ENV=<job id>), which only
its owner can read; it ends by itself at `lifetime_seconds`, past the job's end bound.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import threading
from pathlib import Path

from flashpods.common.polling import poll

PIN_ENV = "FLASHPODS_ARTIFACTS_PIN"
TARGET = "/artifacts"
# A holder lives the job's timeout plus this: past any end bound (timeout + 120 s + the
# reconcile interval), after which the job has ended and its artifacts are collected.
MARGIN_SECONDS = 3600
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PROC = Path("/proc")


class PinError(OSError):
    """The tmpfs could not be pinned, or its pin is gone (ENOENT: the artifacts went with
    the container)."""

    def __init__(self, text: str) -> None:
        super().__init__(errno.ENOENT, text)


def _open_through(container_pid: int, timeout: float) -> int:
    """/artifacts of the container's PID 1. Right after `podman start` PID 1 may still be
    the runtime's init (root's in rootful podman) a moment before it execs: EACCES is
    retried until `timeout`."""
    found: list[int] = []

    def opened() -> bool:
        try:
            found.append(os.open(f"/proc/{container_pid}/root{TARGET}", _DIR))
        except PermissionError:
            return False
        return True

    if not poll(opened, timeout, interval=0.01):
        raise PermissionError(errno.EACCES, f"{TARGET} of pid {container_pid} stays closed")
    return found[0]


def pin(
    container_pid: int, job_id: str, size_bytes: int, lifetime_seconds: int, timeout: float
) -> int:
    """Start the holder of the job's /artifacts; returns its pid. The job's command must
    still wait on its gate (nothing of the job's has run, so the path is ours)."""
    fd = _open_through(container_pid, timeout)
    try:
        fs = os.fstatvfs(fd)
        if fs.f_blocks * fs.f_frsize != size_bytes:  # not the tmpfs we asked podman for
            raise PinError(f"{TARGET} of pid {container_pid} is not the job's tmpfs")
        holder = subprocess.Popen(
            ["sleep", str(lifetime_seconds)],
            # The child enters the directory through our own descriptor: no path lookup.
            cwd=f"/proc/{os.getpid()}/fd/{fd}",
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), PIN_ENV: job_id},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        os.close(fd)
    # Reaped by a thread of its own once it ends (released or timed out).
    threading.Thread(target=holder.wait, name=f"pin-{holder.pid}", daemon=True).start()
    # Popen returns when exec closes its pipe, a moment before the kernel has put the new
    # environment in place: until then the holder cannot be found by its job's id.
    if not poll(lambda: _holds(holder.pid, job_id, os.geteuid()), timeout, interval=0.001):
        holder.kill()
        raise PinError(f"the holder of {TARGET} of pid {container_pid} did not start")
    return holder.pid


def _holds(pid: int, job_id: str | None, uid: int) -> bool:
    """Is `pid` a holder (of `job_id`'s pin; of any job's when None) owned by `uid`?"""
    try:
        if (_PROC / str(pid)).stat().st_uid != uid:
            return False
        environ = (_PROC / str(pid) / "environ").read_bytes().split(b"\0")
    except OSError:  # gone meanwhile, or not ours to read
        return False
    if job_id is None:
        return any(item.startswith(f"{PIN_ENV}=".encode()) for item in environ)
    return f"{PIN_ENV}={job_id}".encode() in environ


def holders(job_id: str | None, uid: int | None = None) -> list[int]:
    """Pids of the live holders of this job's pin (normally one; every job's for None)
    owned by `uid` (default: ours)."""
    owner = os.geteuid() if uid is None else uid
    return [
        int(entry.name)
        for entry in _PROC.iterdir()
        if entry.name.isdigit() and _holds(int(entry.name), job_id, owner)
    ]


def open_pinned(job_id: str, holder: int | None = None) -> int:
    """An O_PATH descriptor of the job's pinned /artifacts; PinError if no holder.
    `holder`: the pid pin() returned, when the caller knows it (checked like any other);
    else every process is looked at (tens of ms on a busy host)."""
    if holder is not None and _holds(holder, job_id, os.geteuid()):
        candidates = [holder]
    else:
        candidates = holders(job_id)
    for pid in candidates:
        with contextlib.suppress(OSError):  # it ended between the scan and the open
            return os.open(f"/proc/{pid}/cwd", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    raise PinError(f"no pin holds the artifacts of job {job_id}")


def open_gate(gate: Path, timeout: float) -> bool:
    """Let the job's command go: one line to its gate FIFO once the command is reading
    it. False if nobody read it within `timeout` (0: only if reading now)."""
    found: list[int] = []

    def reader_there() -> bool:
        try:  # O_NONBLOCK: ENXIO while no reader has it open
            found.append(os.open(gate, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC))
        except OSError as exc:
            if exc.errno not in (errno.ENXIO, errno.ENOENT):  # ENOENT: the gate is gone
                raise
            return False
        return True

    if not poll(reader_there, timeout, interval=0.005):
        return False
    try:
        os.write(found[0], b"go\n")
    finally:
        os.close(found[0])
    return True


def release(job_id: str | None, uid: int | None = None) -> None:
    """Kill the job's holders (every job's for None; `uid` as for holders): its tmpfs
    goes once nobody else holds it."""
    owner = os.geteuid() if uid is None else uid
    for pid in holders(job_id, owner):
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        except OSError:  # no pidfd_open (ENOSYS, before Linux 5.3): checked, then killed
            if _holds(pid, job_id, owner):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            continue
        try:  # checked again through the pidfd: a reused pid is never signalled
            if _holds(pid, job_id, owner):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass
        finally:
            os.close(pidfd)
