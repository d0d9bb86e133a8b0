"""The flashpods-token-service process: start-up refusal, socket mode/owner, socket
activation keeping the socket's inode across restarts."""

from __future__ import annotations

import json
import os
import pwd
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from flashpods.common.polling import wait_until
from flashpods.common.unixhttp import UnixHTTPConnection
from flashpods.tokens.activation import listen_unix, socket_owner, spawn_with_socket
from flashpods.tokens.client import request

SERVICE = str(Path(sys.executable).with_name("flashpods-token-service"))
GOOD = {"anthropic_api_key": "sk-ant-main-SECRET", "github_token": "ghp_mainSECRET"}


def env_for(tmp_path: Path, secrets: Path) -> dict[str, str]:
    return dict(
        os.environ,
        FLASHPODS_SECRETS_FILE=str(secrets),
        FLASHPODS_SOCKET_PATH=str(tmp_path / "token.sock"),
        FLASHPODS_SPIRE_SOCKET=str(tmp_path / "no-agent.sock"),
        FLASHPODS_SPIRE_WAIT_SECONDS="0",
    )


def stop(proc: subprocess.Popen[bytes]) -> bytes:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=10)
    return (out or b"") + (err or b"")


def health(sock: Path, timeout: float = 10) -> dict[str, str]:
    answer: dict[str, str] = {}

    def answered() -> bool:
        try:
            conn = UnixHTTPConnection(sock, timeout=2)
            try:
                answer.update(request(conn, "/health").body)
                return True
            finally:
                conn.close()
        except OSError:
            return False

    wait_until(answered, timeout, f"GET /health on {sock}")
    return answer


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "cannot read it"),
        ("not json", "not valid JSON"),
        (json.dumps({"github_token": "ghp_x"}), "anthropic_api_key is missing"),
        (json.dumps({"anthropic_api_key": "sk-ant-x"}), "github_token is missing"),
    ],
)
def test_refuses_to_start_with_one_clear_line(
    tmp_path: Path, content: str | None, reason: str
) -> None:
    secrets = tmp_path / "secrets.json"
    if content is not None:
        secrets.write_text(content)
    proc = subprocess.run(
        [SERVICE], env=env_for(tmp_path, secrets), capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"flashpods-token-service: cannot start: secrets file {secrets}: ")
    assert reason in lines[0]
    assert "sk-ant-x" not in proc.stderr and "ghp_x" not in proc.stderr
    assert not (tmp_path / "token.sock").exists()


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("soon", "must be a number, got 'soon'"),
        ("-1", "must not be negative, got '-1'"),
        ("nan", "must be a finite number, got 'nan'"),
    ],
)
def test_a_bad_environment_value_is_one_line_not_a_traceback(
    tmp_path: Path, value: str, reason: str
) -> None:
    secrets = tmp_path / "secrets.json"
    secrets.write_text(json.dumps(GOOD))
    env = {**env_for(tmp_path, secrets), "FLASHPODS_SPIRE_WAIT_SECONDS": value}
    proc = subprocess.run([SERVICE], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"flashpods-token-service: cannot start: FLASHPODS_SPIRE_WAIT_SECONDS {reason}"
    ]
    assert not (tmp_path / "token.sock").exists()


def test_binds_socket_0660_owned_by_flashpods(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets.json"
    secrets.write_text(json.dumps(GOOD))
    sock_path = tmp_path / "token.sock"
    sock_path.write_text("")  # not a socket: must not be clobbered
    proc = subprocess.Popen([SERVICE], env=env_for(tmp_path, secrets), stderr=subprocess.PIPE)
    assert proc.wait(timeout=30) != 0
    assert sock_path.read_text() == ""
    sock_path.unlink()

    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(sock_path))  # a stale socket from a previous run is replaced
    stale.close()
    proc = subprocess.Popen([SERVICE], env=env_for(tmp_path, secrets), stderr=subprocess.PIPE)
    try:

        def accepts() -> bool:
            with socket.socket(socket.AF_UNIX) as probe:
                try:
                    probe.connect(str(sock_path))
                    return True
                except OSError:
                    return False

        wait_until(accepts, 15, "the service to listen", interval=0.02)
        # Before listen() already (test_listen_unix_sets_mode_and_owner_before_listen).
        st = os.stat(sock_path)
        assert stat.S_IMODE(st.st_mode) == 0o660
        owner = socket_owner("flashpods")
        expected = owner if owner else (0, 0)
        assert (st.st_uid, st.st_gid) == expected
        body = health(sock_path)
        assert body["status"] == "unhealthy" and body["secrets"] == "ok"
        assert "spire" in body and body["spire"] != "ok"
    finally:
        log = stop(proc)
    assert b"SECRET" not in log


def test_listen_unix_sets_mode_and_owner_before_listen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nobody can connect before listen(): what the socket file is at that moment is what
    every connection meets."""
    path = tmp_path / "token.sock"
    nobody = pwd.getpwnam("nobody")
    at_listen: list[tuple[int, int, int]] = []
    real_listen = socket.socket.listen

    def listen(self: socket.socket, *args: int) -> None:
        st = os.stat(path)
        at_listen.append((stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid))
        real_listen(self, *args)

    monkeypatch.setattr(socket.socket, "listen", listen)
    listen_unix(path, 0o660, (nobody.pw_uid, nobody.pw_gid)).close()
    assert at_listen == [(0o660, nobody.pw_uid, nobody.pw_gid)]


def test_socket_activation_keeps_the_inode_across_restarts(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets.json"
    secrets.write_text(json.dumps(GOOD))
    sock_path = tmp_path / "token.sock"
    listener = listen_unix(sock_path, 0o660, None)
    inode = os.stat(sock_path).st_ino
    env = env_for(tmp_path, secrets)
    try:
        for _ in range(2):
            proc = spawn_with_socket([SERVICE], listener, env, stdout=subprocess.PIPE)
            try:
                assert health(sock_path)["secrets"] == "ok"
            finally:
                log = stop(proc)
            assert b"LISTEN_FDS" in log
            assert os.stat(sock_path).st_ino == inode
    finally:
        listener.close()


def test_socket_owner_lookup() -> None:
    assert socket_owner("no-such-user-flashpods-test") is None
    root = socket_owner("root")
    assert root == (0, 0)
    try:
        pw = pwd.getpwnam("flashpods")
    except KeyError:
        return
    flashpods = socket_owner("flashpods")
    assert flashpods is not None and flashpods[0] == pw.pw_uid


def test_sighup_rereads_the_secrets_file(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets.json"
    secrets.write_text(json.dumps(GOOD))
    log_path = tmp_path / "service.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([SERVICE], env=env_for(tmp_path, secrets), stderr=log)
    try:
        assert health(tmp_path / "token.sock")["secrets"] == "ok"
        secrets.write_text("{broken")
        # No request reaches the service from here on (a request would notice the change
        # by itself): only the signal can make it re-read the file.
        proc.send_signal(signal.SIGHUP)
        wait_until(
            lambda: b"unusable: not valid JSON" in log_path.read_bytes(), 10, "the SIGHUP re-read"
        )
        assert proc.poll() is None, "SIGHUP ended the service"
    finally:
        stop(proc)
    text = log_path.read_bytes()
    assert b"SIGHUP: re-reading the secrets file" in text
    assert b"SECRET" not in text
