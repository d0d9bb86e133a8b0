"""spawn_with_socket, the one way the lab's supervisor and the tests pass a listening
socket the way systemd does: the child's fd 3 is the very socket passed, LISTEN_PID is
the child's own pid, and nothing else of the parent's is inherited."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from flashpods.tokens.activation import listen_unix, spawn_with_socket

# The child reports what it was given, then serves one connection on fd 3.
CHILD = """
import json, os, socket, stat
fds = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
def ident(fd):
    st = os.fstat(fd)
    return [st.st_dev, st.st_ino, stat.S_ISSOCK(st.st_mode), st.st_rdev]
report = {
    "pid": os.getpid(),
    "env": {k: os.environ.get(k) for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")},
    "fd3": ident(3),
    "stdin": ident(0),
    "fds": [fd for fd in fds if fd > 3 and os.path.exists(f"/proc/self/fd/{fd}")],
}
print(json.dumps(report), flush=True)
conn, _ = socket.socket(fileno=3).accept()
conn.sendall(b"served by %d" % os.getpid())
conn.close()
"""


def test_the_child_serves_the_socket_passed_at_fd_3(tmp_path: Path) -> None:
    path = tmp_path / "activated.sock"
    listener = listen_unix(path, 0o600)
    passed = os.fstat(listener.fileno())
    # A descriptor of the parent's that is inheritable must still not reach the child.
    stray_r, stray_w = os.pipe()
    os.set_inheritable(stray_w, True)
    try:
        proc = spawn_with_socket(
            [sys.executable, "-c", CHILD], listener, dict(os.environ), stdout=subprocess.PIPE
        )
        assert proc.stdout is not None
        report = json.loads(proc.stdout.readline())
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(10)
            client.connect(str(path))
            answer = client.recv(100).decode()
        assert proc.wait(timeout=10) == 0
    finally:
        listener.close()
        os.close(stray_r)
        os.close(stray_w)
    assert report["env"] == {
        "LISTEN_PID": str(report["pid"]),
        "LISTEN_FDS": "1",
        "LISTEN_FDNAMES": "activated.sock",
    }
    assert report["pid"] == proc.pid  # sh exec'd in place: LISTEN_PID is the service's pid
    # The same open socket (sockfs device and inode), not another one at the same path.
    assert report["fd3"] == [passed.st_dev, passed.st_ino, True, 0]
    assert answer == f"served by {proc.pid}"
    null = os.stat("/dev/null")
    assert report["stdin"] == [null.st_dev, null.st_ino, False, null.st_rdev]
    assert report["fds"] == []
