"""The HTTP surface on a real unix socket, in-process: codes, bodies, audit lines."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from flashpods.common.polling import wait_until
from flashpods.common.unixhttp import UnixHTTPConnection
from flashpods.tokens.activation import listen_unix
from flashpods.tokens.bundles import BundleSource
from flashpods.tokens.client import Response, exchange, request
from flashpods.tokens.policy import Policy
from flashpods.tokens.secrets_file import SecretsFile
from flashpods.tokens.server import TokenServer
from flashpods.tokens.service import BundleProvider, Exchange
from spiffe.bundle.jwt_bundle.jwt_bundle import JwtBundle
from token_support import AGENT, WORKER, Signer

SECRETS = {"anthropic_api_key": "sk-ant-unit-SECRET", "github_token": "ghp_unitSECRET"}


class Fixed:
    """The bundle a JwtSource would hold (streaming is covered by integration/identity)."""

    def __init__(self, bundle: JwtBundle) -> None:
        self._bundle = bundle

    def bundle(self) -> JwtBundle:
        return self._bundle


@dataclass
class Running:
    socket_path: Path
    secrets_path: Path

    def get(self, path: str, headers: dict[str, str] | None = None) -> Response:
        conn = UnixHTTPConnection(self.socket_path)
        try:
            return request(conn, path, headers)
        finally:
            conn.close()


@contextlib.contextmanager
def serve(tmp_path: Path, bundles: BundleProvider) -> Iterator[Running]:
    secrets_path = tmp_path / "secrets.json"
    secrets_path.write_text(json.dumps(SECRETS))
    store = SecretsFile(secrets_path)
    store.load()
    sock_path = tmp_path / "t.sock"
    server = TokenServer(
        listen_unix(sock_path),
        Exchange(
            bundles, store, Policy.for_trust_domain("flashpods.local"), "flashpods-token-service"
        ),
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield Running(sock_path, secrets_path)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def running(tmp_path: Path, bundle: JwtBundle) -> Iterator[Running]:
    with serve(tmp_path, Fixed(bundle)) as running:
        yield running


def test_worker_and_agent(running: Running, ec_signer: Signer) -> None:
    worker = exchange(running.socket_path, ec_signer.token(sub=WORKER))
    assert (worker.status, worker.body) == (
        200,
        {"ANTHROPIC_API_KEY": None, "GITHUB_TOKEN": SECRETS["github_token"]},
    )
    agent = exchange(running.socket_path, ec_signer.token(sub=AGENT))
    assert agent.status == 200
    assert agent.body == {
        "ANTHROPIC_API_KEY": SECRETS["anthropic_api_key"],
        "GITHUB_TOKEN": SECRETS["github_token"],
    }
    assert agent.headers["Cache-Control"] == "no-store"
    assert agent.headers["Server-Timing"].startswith("validate;dur=")


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "missing_authorization"),
        ({"Authorization": "Basic Zm9vOmJhcg=="}, 401, "malformed_authorization"),
        ({"Authorization": "Bearer not-a-jwt"}, 401, "invalid_jwt"),
        ({"Authorization": "Bearer " + "A" * 20000}, 401, "invalid_jwt"),
    ],
)
def test_header_errors(running: Running, headers: dict[str, str], status: int, code: str) -> None:
    answer = running.get("/tokens", headers)
    assert (answer.status, answer.body["error"]) == (status, code)
    assert set(answer.body) <= {"error", "message", "details"}


def test_valid_svid_outside_policy_is_403(running: Running, ec_signer: Signer) -> None:
    answer = exchange(
        running.socket_path, ec_signer.token(sub="spiffe://flashpods.local/token-service")
    )
    assert (answer.status, answer.body["error"]) == (403, "unknown_identity")
    assert SECRETS["github_token"] not in json.dumps(answer.body)


def test_expired_and_wrong_audience(running: Running, ec_signer: Signer) -> None:
    assert exchange(running.socket_path, ec_signer.token(exp_in=-1)).body["error"] == "expired_jwt"
    assert (
        exchange(running.socket_path, ec_signer.token(aud="x")).body["error"] == "invalid_audience"
    )


def test_huge_header_line_gets_json_431_and_service_survives(
    running: Running, ec_signer: Signer
) -> None:
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.connect(str(running.socket_path))
    raw.sendall(
        b"GET /tokens HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + b"A" * 100_000 + b"\r\n\r\n"
    )
    data = b""
    while chunk := raw.recv(65536):
        data += chunk
    raw.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431")
    assert json.loads(body)["error"] == "headers_too_large"
    assert exchange(running.socket_path, ec_signer.token()).status == 200


def test_broken_secrets_file_is_500_and_recovers(running: Running, ec_signer: Signer) -> None:
    running.secrets_path.write_text("{oops")
    answer = exchange(running.socket_path, ec_signer.token())
    assert (answer.status, answer.body["error"]) == (500, "secrets_unavailable")
    health = running.get("/health")
    assert health.status == 503 and health.body["spire"] == "ok"
    assert health.body["secrets"].startswith("unusable")
    running.secrets_path.write_text(json.dumps(SECRETS))
    assert exchange(running.socket_path, ec_signer.token()).status == 200


def test_health(running: Running) -> None:
    answer = running.get("/health")
    assert (answer.status, answer.body) == (
        200,
        {"status": "healthy", "spire": "ok", "secrets": "ok"},
    )


def test_unknown_path_and_method(running: Running) -> None:
    assert running.get("/nope").status == 404
    conn = UnixHTTPConnection(running.socket_path)
    conn.request("POST", "/tokens", body=b"{}")
    resp = conn.getresponse()
    assert resp.status == 405 and json.loads(resp.read())["error"] == "method_not_allowed"
    conn.close()


def test_spire_unreachable_is_503(tmp_path: Path, ec_signer: Signer) -> None:
    missing = BundleSource(tmp_path / "no-agent.sock", "flashpods.local", retry_interval=0)
    with serve(tmp_path, missing) as running:
        answer = exchange(running.socket_path, ec_signer.token())
        assert (answer.status, answer.body["error"]) == (503, "spire_unavailable")
        health = running.get("/health")
        assert health.status == 503 and health.body["status"] == "unhealthy"


def test_token_invalid_on_its_face_is_401_even_while_spire_is_down(
    tmp_path: Path, ec_signer: Signer
) -> None:
    missing = BundleSource(tmp_path / "no-agent.sock", "flashpods.local", retry_interval=0)
    none_alg = ec_signer.token().split(".")
    with serve(tmp_path, missing) as running:
        for token in ("garbage", f"{none_alg[0][:0]}eyJhbGciOiJub25lIn0.{none_alg[1]}.", "a.b.c"):
            answer = exchange(running.socket_path, token)
            assert (answer.status, answer.body["error"]) == (401, "invalid_jwt"), token


def test_one_audit_line_per_exchange_without_secrets_or_jwt(
    running: Running, ec_signer: Signer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="flashpods.tokens.audit")
    tokens = [ec_signer.token(sub=AGENT), ec_signer.token(sub=WORKER), ec_signer.token(exp_in=-1)]
    for token in tokens:
        exchange(running.socket_path, token)
    exchange(running.socket_path, None)
    lines = [r.getMessage() for r in caplog.records if r.name == "flashpods.tokens.audit"]
    assert len(lines) == 4
    assert lines[0].startswith(
        f"exchange granted spiffe_id={AGENT} secrets=ANTHROPIC_API_KEY,GITHUB_TOKEN"
    )
    assert lines[1].startswith(
        f"exchange granted spiffe_id={WORKER} secrets=GITHUB_TOKEN token=sha256:"
    )
    assert lines[2].startswith("exchange denied status=401 reason=expired_jwt")
    assert lines[3].startswith("exchange denied status=401 reason=missing_authorization")
    text = "\n".join(r.getMessage() for r in caplog.records)
    for value in SECRETS.values():
        assert value not in text
    for token in tokens:
        for part in token.split("."):
            assert part not in text


def _read_until_closed(conn: socket.socket) -> bytes:
    chunks = []
    while chunk := conn.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_one_caller_gets_a_bounded_share_of_connections(
    tmp_path: Path, bundle: JwtBundle, ec_signer: Signer, caplog: pytest.LogCaptureFixture
) -> None:
    from flashpods.tokens.server import MAX_CONNECTIONS_PER_CALLER

    caplog.set_level(logging.INFO, logger="flashpods.tokens.audit")
    with serve(tmp_path, Fixed(bundle)) as running:
        held = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(8)]
        for conn in held:
            conn.connect(str(running.socket_path))
            conn.sendall(b"GET /tokens HTTP/1.1\r\n")  # and never finish the request
        assert len(held) == MAX_CONNECTIONS_PER_CALLER
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as extra:
            extra.connect(str(running.socket_path))
            reply = _read_until_closed(extra).decode()
        assert reply.startswith("HTTP/1.1 429")
        assert json.loads(reply.split("\r\n\r\n", 1)[1])["error"] == "too_many_connections"
        assert any(
            "reason=too_many_connections caller=uid:" in r.getMessage() for r in caplog.records
        )
        held.pop().close()
        # The freed share is usable again once the server has read the EOF.

        def served() -> bool:
            try:
                return exchange(running.socket_path, ec_signer.token()).status == 200
            except OSError:  # refused before our request went out
                return False

        wait_until(served, 10, "the caller's freed connection slot")
        for conn in held:
            conn.close()


def test_a_trickled_request_is_cut_at_the_request_deadline(
    tmp_path: Path, bundle: JwtBundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One header line at a time resets no timer: the whole request has one deadline."""
    monkeypatch.setattr("flashpods.tokens.server.REQUEST_DEADLINE_SECONDS", 0.5)
    with serve(tmp_path, Fixed(bundle)) as running, socket.socket(socket.AF_UNIX) as conn:
        conn.connect(str(running.socket_path))
        conn.sendall(b"GET /tokens HTTP/1.1\r\n")
        sent = 0
        closed = False
        # Each line arrives well within any per-read timeout; 100 of them take 10 s.
        for sent in range(100):
            try:
                conn.sendall(f"X-Pad-{sent}: x\r\n".encode())
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            conn.settimeout(0.1)
            try:
                if conn.recv(1) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
        assert closed and sent < 100


def test_connections_beyond_the_limit_wait_for_a_free_slot(
    tmp_path: Path, bundle: JwtBundle, ec_signer: Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("flashpods.tokens.server.MAX_CONNECTIONS", 2)
    with serve(tmp_path, Fixed(bundle)) as running:
        idle = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(2)]
        for conn in idle:
            conn.connect(str(running.socket_path))
        # The server accepts in the listen queue's order: both slots go to the idle
        # connections before the waiter's is accepted.
        result: list[int] = []
        token = ec_signer.token()

        def client() -> None:
            result.append(exchange(running.socket_path, token).status)

        waiter = threading.Thread(target=client)
        waiter.start()
        # Elapsed time is what is tested: a second on, it is still not served.
        waiter.join(timeout=1.0)
        assert waiter.is_alive() and result == []  # accepted by the kernel, not served
        idle[0].close()
        waiter.join(timeout=10)
        assert result == [200]
        idle[1].close()
