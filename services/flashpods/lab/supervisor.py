"""The lab's supervisor: starts the units in order and keeps them running.

It does for the lab what systemd does on NixOS: each unit in its own session
(process group, the stand-in for a cgroup), started after the units it is `after`,
counted up once ready, restarted `restart_sec` after it dies (Restart=always), with
any leftover processes of the old instance killed first (KillMode=control-group).
A unit with a `socket` gets a listening unix socket the supervisor created once and
holds, passed as fd 3 with LISTEN_FDS/LISTEN_PID, so its inode never changes.

Run as `python -m flashpods.lab.supervisor STATE_DIR` (started by `flashpods-lab up`);
control it through STATE_DIR/supervisor.sock with one JSON object per line:
{"cmd": "status"|"stop"|"start"|"shutdown", "unit": NAME}.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flashpods.common.polling import poll
from flashpods.common.programs import ProgramFailure, run_program
from flashpods.lab.proc import LabError, in_netns
from flashpods.lab.units import FileMode, Unit, load, start_order
from flashpods.tokens.activation import listen_unix, spawn_with_socket

STOP_GRACE = 10.0
# A readiness command that takes longer says "not ready yet"; the next probe asks again.
PROBE_SECONDS = 10.0


class PreStartFailed(Exception):
    pass


def _apply_mode(spec: FileMode) -> None:
    os.chown(spec.path, pwd.getpwnam(spec.user).pw_uid, grp.getgrnam(spec.group).gr_gid)
    os.chmod(spec.path, int(spec.mode, 8))


def make_listen_socket(spec: FileMode) -> socket.socket:
    """The token service's own listen_unix: owned and moded before listen()."""
    owner = (pwd.getpwnam(spec.user).pw_uid, grp.getgrnam(spec.group).gr_gid)
    return listen_unix(Path(spec.path), int(spec.mode, 8), owner)


class _ProbeHung(Exception):
    pass


def _probe_failed(failure: ProgramFailure) -> Exception:
    if failure.reason == "not found":  # a set-up fault, not a unit that is slow to come up
        return LabError(f"missing program: {failure.argv[0]} (run scripts/setup.sh)")
    return _ProbeHung(failure.reason)


def _run_probe(argv: list[str]) -> subprocess.CompletedProcess[str] | None:
    """A readiness command's result; None if it did not finish in time."""
    try:
        return run_program(argv, fail=_probe_failed, check=False, timeout=PROBE_SECONDS)
    except _ProbeHung:
        return None


def _probe(unit: Unit, proc: subprocess.Popen[bytes]) -> bool:
    ready = unit.ready
    if ready.kind == "exit":
        return proc.poll() == 0
    if ready.kind == "unix":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(1)
        try:
            s.connect(ready.path)
            return True
        except OSError:
            return False
        finally:
            s.close()
    if ready.kind == "listen":
        argv = in_netns(ready.netns, ["ss", "-Hltn", f"sport = :{ready.port}"])
        probe = _run_probe(argv)
        return probe is not None and bool(probe.stdout.strip())
    if ready.kind == "command":
        probe = _run_probe(list(ready.argv))
        return probe is not None and probe.returncode == 0
    raise ValueError(f"unknown readiness kind {ready.kind!r}")


@dataclass
class Service:
    unit: Unit
    proc: subprocess.Popen[bytes] | None = None
    state: str = "inactive"  # inactive|starting|active|exited|failed|stopped|restarting
    restarts: int = 0
    wanted: bool = True
    last_exit: int | None = None
    started_at: float = 0.0
    ready_at: float = 0.0
    # The first start (boot), kept across restarts: the start order is checked on these.
    boot_started_at: float = 0.0
    boot_ready_at: float = 0.0

    def status(self) -> dict[str, Any]:
        pid = self.proc.pid if self.proc and self.proc.poll() is None else None
        return {
            "state": self.state,
            "pid": pid,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "oneshot": self.unit.oneshot,
            "after": list(self.unit.after),
            "started_at": self.started_at,
            "ready_at": self.ready_at,
            "boot_started_at": self.boot_started_at,
            "boot_ready_at": self.boot_ready_at,
        }


class Supervisor:
    def __init__(self, state_dir: Path, units: list[Unit]) -> None:
        self.state_dir = state_dir
        self.log_dir = Path(os.environ.get("FLASHPODS_LAB_LOG_DIR", "/var/log/flashpods-lab"))
        self.order = start_order(units)
        self.services = {u.name: Service(u) for u in self.order}
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        self.held: socket.socket | None = None

    # -- start / stop ---------------------------------------------------------
    def _spawn(self, svc: Service) -> None:
        unit = svc.unit
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = dict(unit.env)
        with open(self.log_dir / f"{unit.name}.log", "ab") as log:
            log.write(
                f"--- {time.strftime('%H:%M:%S')} supervisor: starting {unit.name}\n".encode()
            )
            log.flush()
            for pre in unit.pre_start:
                code = subprocess.run(
                    list(pre),
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    check=False,
                ).returncode
                if code != 0:
                    raise PreStartFailed(f"{unit.name}: {pre[0]} exited {code}")
            if unit.socket is not None:
                assert self.held is not None, f"{unit.name}: its socket was never made"
                svc.proc = spawn_with_socket(
                    unit.argv, self.held, env, stdout=log, start_new_session=True
                )
            else:
                svc.proc = subprocess.Popen(
                    unit.argv,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        svc.started_at = time.time()
        svc.boot_started_at = svc.boot_started_at or svc.started_at
        svc.state = "starting"
        self._write_status()

    def _wait_ready(self, svc: Service) -> bool:
        unit = svc.unit
        proc = svc.proc
        assert proc is not None
        deadline = time.monotonic() + unit.ready_timeout
        if not unit.oneshot:
            settled = poll(
                lambda: proc.poll() is not None or _probe(unit, proc),
                unit.ready_timeout,
                interval=0.1,
                stop=self.stopping,
            )
            if not settled or proc.poll() is not None:
                return False
            for spec in unit.post_start:
                _apply_mode(spec)
            with self.lock:
                svc.state = "active"
                svc.ready_at = time.time()
                svc.boot_ready_at = svc.boot_ready_at or svc.ready_at
                self._write_status()
            return True
        # A oneshot is done when it exits; stopping the supervisor ends the wait early.
        poll(lambda: proc.poll() is not None, unit.ready_timeout, interval=0.1, stop=self.stopping)
        try:
            code = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            code = None
        with self.lock:
            svc.last_exit = code
            svc.state = "exited" if code == 0 else "failed"
            svc.ready_at = time.time()
            svc.boot_ready_at = svc.boot_ready_at or svc.ready_at
            self._write_status()
        return code == 0

    def start(self, name: str) -> bool:
        svc = self.services[name]
        with self.lock:
            svc.wanted = True
            if svc.proc is not None and svc.proc.poll() is None:
                return svc.state == "active"
            try:
                self._spawn(svc)
            except PreStartFailed:
                svc.state = "failed"
                self._write_status()
                return False
        ok = self._wait_ready(svc)
        if not ok and not svc.unit.oneshot:
            with self.lock:
                if svc.proc is not None and svc.proc.poll() is not None:
                    svc.state = "failed"
                    self._write_status()
        return ok

    def stop(self, name: str) -> None:
        svc = self.services[name]
        with self.lock:
            svc.wanted = False
            proc = svc.proc
        if proc is not None:
            began = time.monotonic()
            _kill_group(proc, graceful=True)
            print(
                f"{time.strftime('%H:%M:%S')} stopped {name} in {time.monotonic() - began:.1f} s",
                flush=True,
            )
        with self.lock:
            svc.state = "stopped" if not svc.unit.oneshot else svc.state
            self._write_status()

    # -- the loop ---------------------------------------------------------------
    def boot(self) -> None:
        for svc in (self.services[u.name] for u in self.order):
            if self.stopping.is_set():
                return
            deps_ok = all(
                self.services[d].state in ("active", "exited")
                for d in svc.unit.after
                if d in self.services
            )
            if not deps_ok:
                with self.lock:
                    svc.state = "failed"
                    self._write_status()
                continue
            self.start(svc.unit.name)

    def watch(self) -> None:
        """Restart=always: a wanted long-running unit that died comes back."""
        while not self.stopping.is_set():
            for svc in list(self.services.values()):
                with self.lock:
                    proc = svc.proc
                    due = (
                        not svc.unit.oneshot
                        and svc.wanted
                        and proc is not None
                        and proc.poll() is not None
                        and svc.state in ("active", "failed")
                    )
                    if due:
                        assert proc is not None
                        svc.last_exit = proc.returncode
                        svc.state = "restarting"
                        self._write_status()
                if due:
                    assert proc is not None
                    threading.Thread(target=self._restart, args=(svc, proc), daemon=True).start()
            self.stopping.wait(0.2)

    def _restart(self, svc: Service, old: subprocess.Popen[bytes]) -> None:
        _kill_group(old, graceful=False)
        self.stopping.wait(svc.unit.restart_sec)
        if self.stopping.is_set() or not svc.wanted:
            return
        with self.lock:
            svc.restarts += 1
        self.start(svc.unit.name)

    def shutdown(self) -> None:
        self.stopping.set()
        for unit in reversed(self.order):
            self.stop(unit.name)
        if self.held is not None:
            self.held.close()
            for unit in self.order:
                if unit.socket is not None:
                    Path(unit.socket.path).unlink(missing_ok=True)

    # -- state ------------------------------------------------------------------
    def _write_status(self) -> None:
        data = {
            "supervisor_pid": os.getpid(),
            "units": {name: s.status() for name, s in self.services.items()},
        }
        tmp = self.state_dir / "status.json.tmp"
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(self.state_dir / "status.json")

    def status(self) -> dict[str, Any]:
        with self.lock:
            return {
                "supervisor_pid": os.getpid(),
                "units": {name: s.status() for name, s in self.services.items()},
            }

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request.get("cmd")
        name = request.get("unit", "")
        if cmd == "status":
            return self.status()
        if cmd in ("start", "stop") and name not in self.services:
            return {"error": f"unknown unit {name}"}
        if cmd == "start":
            return {"ok": self.start(name)}
        if cmd == "stop":
            self.stop(name)
            return {"ok": True}
        if cmd == "shutdown":
            threading.Thread(target=self._shutdown_and_exit, daemon=True).start()
            return {"ok": True}
        return {"error": f"unknown command {cmd!r}"}

    def _shutdown_and_exit(self) -> None:
        self.shutdown()
        (self.state_dir / "supervisor.sock").unlink(missing_ok=True)
        (self.state_dir / "supervisor.pid").unlink(missing_ok=True)
        os._exit(0)


def _kill_group(proc: subprocess.Popen[bytes], *, graceful: bool) -> None:
    """SIGTERM (then SIGKILL after the grace) to the unit's whole process group."""
    pgid = proc.pid  # start_new_session: the group is the unit's own
    if graceful and proc.poll() is None:
        _signal_group(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=STOP_GRACE)
    _signal_group(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def serve_control(sup: Supervisor, path: Path) -> None:
    path.unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    os.chmod(path, 0o600)
    server.listen(16)

    def client(conn: socket.socket) -> None:
        with conn, conn.makefile("rwb") as f:
            for line in f:
                try:
                    reply = sup.handle(json.loads(line))
                except Exception as exc:  # one bad request must not end the supervisor
                    reply = {"error": f"{type(exc).__name__}: {exc}"}
                f.write((json.dumps(reply) + "\n").encode())
                f.flush()

    while True:
        conn, _ = server.accept()
        threading.Thread(target=client, args=(conn,), daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    state_dir = Path(args[0])
    units = load(state_dir / "units.json")
    sup = Supervisor(state_dir, units)
    socket_units = [u for u in units if u.socket is not None]
    if len(socket_units) > 1:
        raise SystemExit("the lab supervisor passes at most one listening socket")
    if socket_units:
        sup.held = make_listen_socket(socket_units[0].socket)  # type: ignore[arg-type]
    (state_dir / "supervisor.pid").write_text(f"{os.getpid()}\n")
    signal.signal(signal.SIGTERM, lambda *_: sup._shutdown_and_exit())
    threading.Thread(
        target=serve_control, args=(sup, state_dir / "supervisor.sock"), daemon=True
    ).start()
    threading.Thread(target=sup.watch, daemon=True).start()
    sup.boot()
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    raise SystemExit(main())
