"""The lab supervisor with real processes: order, readiness, Restart=always after
kill -9, a socket whose inode survives restarts (LISTEN_FDS), stop and shutdown."""

from __future__ import annotations

import grp
import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flashpods.common.polling import wait_until
from flashpods.lab import supervisor
from flashpods.lab.proc import LabError, alive
from flashpods.lab.units import FileMode, Readiness, Unit, save

# A socket-activated server: checks the systemd protocol, answers each connection with
# its pid and the order file's content at its start.
SOCKET_SERVER = """
import os, socket, sys
assert os.environ["LISTEN_FDS"] == "1", os.environ.get("LISTEN_FDS")
assert int(os.environ["LISTEN_PID"]) == os.getpid()
s = socket.socket(fileno=3)
seen = open(sys.argv[1]).read()
while True:
    c, _ = s.accept()
    try:
        c.sendall(f"{os.getpid()} {seen}".encode())
    except OSError:  # the supervisor's readiness probe hangs up at once
        pass
    c.close()
"""

UNIX_SERVER = """
import socket, sys, time
open(sys.argv[2], "a").write("a ")
s = socket.socket(socket.AF_UNIX)
import os
if os.path.exists(sys.argv[1]): os.unlink(sys.argv[1])
s.bind(sys.argv[1]); s.listen(4)
while True:
    s.accept()[0].close()
"""


def _me() -> tuple[str, str]:
    return pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    user, group = _me()
    order = tmp_path / "order"
    order.write_text("")
    py = sys.executable
    units = [
        Unit(
            name="b",
            argv=(py, "-c", SOCKET_SERVER, str(order)),
            env={},
            after=("once",),
            ready=Readiness("unix", path=str(tmp_path / "t.sock")),
            restart_sec=0.3,
            socket=FileMode(str(tmp_path / "t.sock"), user, group, "0660"),
        ),
        Unit(
            name="once",
            argv=("sh", "-c", f'echo -n "once " >> {order}'),
            env={},
            after=("a",),
            ready=Readiness("exit"),
            oneshot=True,
        ),
        Unit(
            name="a",
            argv=(py, "-c", UNIX_SERVER, str(tmp_path / "a.sock"), str(order)),
            env={},
            after=("network.target",),
            restart_sec=0.3,
            pre_start=(("sh", "-c", f'echo -n "pre " >> {order}'),),
            ready=Readiness("unix", path=str(tmp_path / "a.sock")),
            post_start=(FileMode(str(tmp_path / "a.sock"), user, group, "0640"),),
        ),
    ]
    save(units, tmp_path / "units.json")
    proc = subprocess.Popen(
        [py, "-m", "flashpods.lab.supervisor", str(tmp_path)],
        env={**os.environ, "FLASHPODS_LAB_LOG_DIR": str(tmp_path / "logs")},
    )
    try:
        _wait(lambda: _states(tmp_path) == {"a": "active", "once": "exited", "b": "active"})
        yield tmp_path, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)


def _status(state: Path) -> dict[str, dict[str, object]]:
    try:
        data = json.loads((state / "status.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}
    units: dict[str, dict[str, object]] = data["units"]
    return units


def _states(state: Path) -> dict[str, object]:
    return {name: info["state"] for name, info in _status(state).items()}


def _wait(cond: Callable[[], bool], timeout: float = 20) -> None:
    wait_until(cond, timeout, "the supervisor's state")


def _ask(sock_path: Path) -> str:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(sock_path))
        return s.recv(100).decode()


def _control(state: Path, request: dict[str, str]) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(state / "supervisor.sock"))
        s.sendall((json.dumps(request) + "\n").encode())
        reply: dict[str, object] = json.loads(s.makefile().readline())
        return reply


def test_units_start_in_order_with_pre_and_post_start(supervised) -> None:
    state, _ = supervised
    pid, seen = _ask(state / "t.sock").split(" ", 1)
    # pre_start ran before a, a was ready before the oneshot, b started after both
    assert seen.split() == ["pre", "a", "once"]
    assert oct((state / "a.sock").stat().st_mode & 0o777) == "0o640"
    assert oct((state / "t.sock").stat().st_mode & 0o777) == "0o660"
    assert int(pid) == _status(state)["b"]["pid"]


def test_kill_9_restarts_the_unit_and_the_socket_keeps_its_inode(supervised) -> None:
    state, _ = supervised
    inode = (state / "t.sock").stat().st_ino
    old = int(_ask(state / "t.sock").split()[0])
    os.kill(old, signal.SIGKILL)
    _wait(lambda: not alive(old))  # a dying process could still accept
    # A client connecting while the unit is down is queued on the held socket and
    # answered by the new instance: nothing is refused during the restart.
    answer = _ask(state / "t.sock")
    new = int(answer.split()[0])
    assert new != old
    assert (state / "t.sock").stat().st_ino == inode
    _wait(lambda: _status(state)["b"]["restarts"] == 1 and _states(state)["b"] == "active")


def test_stopped_unit_is_not_restarted_and_start_brings_it_back(supervised) -> None:
    state, _ = supervised
    pid = _status(state)["a"]["pid"]
    assert _control(state, {"cmd": "stop", "unit": "a"}) == {"ok": True}
    assert _states(state)["a"] == "stopped"
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid), 0)  # type: ignore[call-overload]
    # Elapsed time is what is tested: nothing restarts it within more than restart_sec.
    time.sleep(0.6)
    assert _states(state)["a"] == "stopped"
    assert _control(state, {"cmd": "start", "unit": "a"}) == {"ok": True}
    assert _states(state)["a"] == "active"
    assert _control(state, {"cmd": "start", "unit": "nope"}) == {"error": "unknown unit nope"}


def test_shutdown_ends_every_unit_and_removes_the_socket(supervised) -> None:
    state, proc = supervised
    pids = [int(info["pid"]) for info in _status(state).values() if info["pid"]]  # type: ignore[call-overload]
    assert len(pids) == 2
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not (state / "t.sock").exists()
    assert not (state / "supervisor.sock").exists()


def test_a_readiness_command_that_hangs_is_not_ready_and_a_missing_one_is_a_set_up_fault(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(supervisor, "PROBE_SECONDS", 0.2)
    unit_process = subprocess.Popen(["true"])  # the unit itself (only "exit" looks at it)
    unit_process.wait()

    def unit(ready: Readiness) -> Unit:
        return Unit(name="u", argv=("true",), env={}, after=(), ready=ready)

    hung = Readiness("command", argv=("sleep", "30"))
    assert not supervisor._probe(unit(hung), unit_process)
    missing = Readiness("command", argv=("flashpods-no-such-program",))
    with pytest.raises(LabError, match="missing program: flashpods-no-such-program"):
        supervisor._probe(unit(missing), unit_process)
