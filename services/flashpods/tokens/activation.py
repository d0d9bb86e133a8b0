"""The listening unix socket: inherited from systemd (LISTEN_FDS) or bound here.

Job containers bind-mount the socket *file*, so its inode must survive service restarts:
under systemd a socket unit owns it; the lab's supervisor and the tests do the same
with `listen_unix` + `spawn_with_socket` (the one implementation of the passing). When
the service binds it itself, mode and owner are set before listen(), so no connection
is accepted with the wrong permissions.
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
from typing import IO, Any

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


# Run by `sh -c` with the service's argv as "$@": the socket, handed over as stdin,
# becomes fd 3 and stdin /dev/null (systemd's StandardInput=null); LISTEN_PID is `sh`'s
# own pid, which stays the service's because sh, nsenter and setpriv all exec in place.
_AS_FD_3 = 'exec 3<&0 0</dev/null; LISTEN_PID=$$; export LISTEN_PID; exec "$@"'


def spawn_with_socket(
    argv: Sequence[str],
    sock: socket.socket,
    env: Mapping[str, str],
    *,
    stdout: int | IO[Any] | None = None,
    start_new_session: bool = False,
) -> subprocess.Popen[bytes]:
    """Start `argv` the way systemd starts a socket-activated service: `sock` at fd 3,
    LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES set, stdin /dev/null, stderr with stdout, no
    other descriptor of ours inherited.

    The socket travels as the child's stdin, which subprocess puts in place after the
    fork by itself: no preexec_fn (unsafe in a threaded parent) and no fixed descriptor
    in the parent (dash can only name fds 0-9)."""
    name = Path(sock.getsockname()).name
    return subprocess.Popen(
        ["/bin/sh", "-c", _AS_FD_3, "sh", *argv],
        env={**env, "LISTEN_FDS": "1", "LISTEN_FDNAMES": name},
        stdin=sock.fileno(),
        stdout=stdout,
        stderr=subprocess.STDOUT,
        start_new_session=start_new_session,
    )
