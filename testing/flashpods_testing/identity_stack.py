"""The identity stack in one directory: podman API service (flashpods_testing.localhost),
SPIRE server and agent, token service. Used by the real-component tests and the benchmark (the
lab runs the same pieces at the real paths). Everything lives under `base`; the server
binds 127.0.0.1 on a free port; `close()` stops what it started, in reverse order.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from flashpods.spire.binaries import spire_bin_dir
from flashpods.spire.bootstrap import BootstrapResult, bootstrap, wait_for_agent
from flashpods.spire.config import SpireSettings, write_configs
from flashpods.spire.tools_dir import assemble_tools_dir
from flashpods.tokens.activation import listen_unix, spawn_with_socket

from flashpods_testing.localhost import PodmanService, free_port


@dataclass
class IdentityStack:
    base: Path
    # uid:gid the job containers run as: pinned in the entries (unix:uid) and owner of
    # the token socket, as the flashpods user is on a real host.
    workload_uid: int
    workload_gid: int
    secrets: dict[str, str]
    settings: SpireSettings = field(init=False)
    bin_dir: Path = field(init=False)
    podman_socket: Path = field(init=False)
    token_socket: Path = field(init=False)
    secrets_file: Path = field(init=False)
    tools_dir: Path = field(init=False)
    logs: Path = field(init=False)
    _podman: PodmanService = field(init=False)
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, init=False)
    _log_files: list[IO[bytes]] = field(default_factory=list, init=False)
    _token_listener: socket.socket | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.token_socket = self.base / "token.sock"
        self.secrets_file = self.base / "secrets.json"
        self.tools_dir = self.base / "tools"
        self.logs = self.base / "logs"
        self._podman = PodmanService(self.base, log=self.logs / "podman.log")
        self.podman_socket = self._podman.socket
        self.settings = SpireSettings.from_deployment().under(
            self.base,
            port=free_port(),
            podman_socket=self.podman_socket,
            workload_uid=self.workload_uid,
        )
        self.bin_dir = spire_bin_dir(self.settings.version)

    # -- processes -----------------------------------------------------------------
    def _spawn(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        sock: socket.socket | None = None,
    ) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - closed in close()
        self._log_files.append(log)
        full_env = dict(os.environ, **(env or {}))
        if sock is not None:
            proc = spawn_with_socket(argv, sock, full_env, stdout=log)
        else:
            proc = subprocess.Popen(argv, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        self._procs[name] = proc
        return proc

    def stop(self, name: str) -> None:
        proc = self._procs.pop(name, None)
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def start(self) -> IdentityStack:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.write_secrets(self.secrets)
        write_configs(self.settings)
        assemble_tools_dir(self.tools_dir, self.bin_dir)
        self._podman.start()
        self.start_server()
        self.bootstrap()
        self.start_agent()
        self.start_token_service()
        return self

    def start_server(self) -> None:
        server = str(self.bin_dir / "spire-server")
        self._spawn("spire-server", [server, "run", "-config", str(self.settings.server_conf_path)])

    def bootstrap(self) -> BootstrapResult:
        return bootstrap(self.settings, self.bin_dir, server_wait_seconds=30)

    def start_agent(self) -> None:
        agent = str(self.bin_dir / "spire-agent")
        self._spawn("spire-agent", [agent, "run", "-config", str(self.settings.agent_conf_path)])
        wait_for_agent(self.settings, self.bin_dir, timeout=30)

    def restart_agent(self) -> BootstrapResult:
        """What the agent's unit does on restart: stop, bootstrap, start."""
        self.stop("spire-agent")
        result = self.bootstrap()
        self.start_agent()
        return result

    def start_token_service(self) -> None:
        """Socket-activated like under systemd: the socket (and its inode) outlives restarts."""
        if self._token_listener is None:
            owner = (self.workload_uid, self.workload_gid)
            self._token_listener = listen_unix(self.token_socket, 0o660, owner)
        env = {
            "FLASHPODS_SECRETS_FILE": str(self.secrets_file),
            "FLASHPODS_SOCKET_PATH": str(self.token_socket),
            "FLASHPODS_SPIRE_SOCKET": str(self.settings.agent_socket_path),
            "FLASHPODS_LOG_LEVEL": "info",
        }
        service = str(Path(sys.executable).with_name("flashpods-token-service"))
        self._spawn("token-service", [service], sock=self._token_listener, env=env)

    def restart_token_service(self) -> None:
        self.stop("token-service")
        self.start_token_service()

    def write_secrets(self, secrets: dict[str, str]) -> None:
        """Atomic replace, as an operator's deploy tool would."""
        tmp = self.secrets_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(secrets, handle)
        os.replace(tmp, self.secrets_file)

    def close(self) -> None:
        for name in ("token-service", "spire-agent", "spire-server"):
            self.stop(name)
        self._podman.stop()
        if self._token_listener is not None:
            self._token_listener.close()
        for log in self._log_files:
            log.close()

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.base)
