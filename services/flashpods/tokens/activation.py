"""The listening unix socket: inherited from systemd (LISTEN_FDS) or bound here.

Job containers bind-mount the socket *file*, so its inode must survive service restarts:
under systemd a socket unit owns it; the lab and the tests do the same with
`listen_unix` + `spawn_with_socket`. When the service binds it itself, mode and owner
are set before listen(), so no connection is accepted with the wrong permissions.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import stat
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

SD_LISTEN_FDS_START = 3


def socket_owner(user: str) -> tuple[int, int] | None:
    """(uid, gid) of `user` and its same-named group, or None when the user does not exist."""
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return None
    try:
        gid = grp.getgrnam(user).gr_gid
    except KeyError:
        gid = pw.pw_gid
    return pw.pw_uid, gid


def inherited_socket() -> socket.socket | None:
    """The first socket passed by systemd's protocol, if it was passed to this process."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    count = int(os.environ.get("LISTEN_FDS", "0"))
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    if count < 1:
        return None
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        raise RuntimeError("LISTEN_FDS: fd 3 is not a unix stream socket")
    os.set_inheritable(SD_LISTEN_FDS_START, False)
    return sock


def listen_unix(
    path: Path, mode: int = 0o660, owner: tuple[int, int] | None = None
) -> socket.socket:
    """Bind `path` (replacing a stale socket), set mode/owner, then listen."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            path.unlink()
        else:
            raise FileExistsError(f"{path} exists and is not a socket")
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    os.chmod(path, mode)
    if owner is not None:
        os.chown(path, *owner)
    sock.listen(128)
    return sock


def activation_env(name: str) -> dict[str, str]:
    """What systemd sets besides LISTEN_PID for one passed socket named `name`."""
    return {"LISTEN_FDS": "1", "LISTEN_FDNAMES": name}


def listen_pid_script(held_fd: int = SD_LISTEN_FDS_START) -> str:
    """`sh -c` script (run with the service's argv as "$@"): the socket held at `held_fd`
    becomes fd 3 and LISTEN_PID the service's own pid: `sh` sets it to `$$` and execs in
    place (so do nsenter and setpriv after it). dash knows fds 0-9 only."""
    if not 0 <= held_fd <= 9:
        raise ValueError(f"fd {held_fd}: sh redirects only fds 0-9")
    move = "" if held_fd == SD_LISTEN_FDS_START else f"exec 3<&{held_fd} {held_fd}<&-; "
    return f'{move}LISTEN_PID=$$; export LISTEN_PID; exec "$@"'


def spawn_with_socket(
    argv: Sequence[str], sock: socket.socket, env: Mapping[str, str], **popen: object
) -> subprocess.Popen[bytes]:
    """Start `argv` the way systemd starts a socket-activated service (fd 3, LISTEN_*).

    LISTEN_PID must be the service's own pid: `sh` sets it to `$$` and execs in place.
    close_fds=False is safe: Python's own descriptors are non-inheritable (PEP 446); only
    the dup2'ed fd 3 and stdio cross the exec.
    """
    fd = sock.fileno()

    def as_fd_3() -> None:
        os.dup2(fd, SD_LISTEN_FDS_START)
        os.set_inheritable(SD_LISTEN_FDS_START, True)

    return subprocess.Popen(  # type: ignore[call-overload,no-any-return]
        ["/bin/sh", "-c", listen_pid_script(), "sh", *argv],
        env={**env, **activation_env(Path(sock.getsockname()).name)},
        close_fds=False,
        preexec_fn=as_fd_3,
        **popen,
    )
