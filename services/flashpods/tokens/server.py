"""Standard-library HTTP on the unix socket: GET /tokens, GET /health, JSON errors."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import socket
import socketserver
import sys
import threading
import time
from http import HTTPStatus
from typing import Any

from flashpods.common.errors import ServiceError
from flashpods.common.jsonhttp import JsonRequestHandler
from flashpods.tokens.callers import ConnectionBudget, peer_caller
from flashpods.tokens.service import Exchange, Outcome

audit = logging.getLogger("flashpods.tokens.audit")
log = logging.getLogger("flashpods.tokens.http")

LINGER_MAX_BYTES = 1 << 20
MAX_CONNECTIONS = 128
# Per caller (a job container; see callers.py): one job cannot take the slots of others.
MAX_CONNECTIONS_PER_CALLER = 8
# From the start of a request to its last header line: a client that trickles one byte
# or one header line at a time is cut off here, not after one idle read.
REQUEST_DEADLINE_SECONDS = 10.0


class TokenServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, sock: socket.socket, exchange: Exchange) -> None:
        # The socket is already bound and listening (ours or systemd's).
        super().__init__("", TokenHandler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.exchange = exchange
        # One thread per connection, but not unbounded: a job opening thousands of
        # connections is refused beyond its own share, and all callers together make the
        # accept loop wait instead of exhausting the host.
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._budget = ConnectionBudget(MAX_CONNECTIONS_PER_CALLER)

    def process_request(self, request: Any, client_address: Any) -> None:
        caller = peer_caller(request)
        if not self._budget.take(caller):
            _refuse(request, caller)
            self.shutdown_request(request)
            return
        self._slots.acquire()
        try:
            # The caller travels as the handler's client_address (a unix peer has none).
            super().process_request(request, caller)
        except BaseException:
            self._slots.release()
            self._budget.give_back(caller)
            raise

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-answer is routine, not a traceback on stderr."""
        log.info("connection of %s ended: %r", client_address, sys.exc_info()[1])

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()
            self._budget.give_back(client_address)


def _refuse(conn: socket.socket, caller: str) -> None:
    """429 without blocking the accept loop: one non-blocking write, then close."""
    audit.info("connection refused reason=too_many_connections caller=%s", caller)
    error = ServiceError(
        429,
        "too_many_connections",
        f"more than {MAX_CONNECTIONS_PER_CALLER} open connections from this caller",
    )
    payload = json.dumps(error.body()).encode()
    head = (
        "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\nRetry-After: 1\r\n\r\n"
    )
    conn.setblocking(False)
    with contextlib.suppress(OSError):
        conn.send(head.encode() + payload)


class _DeadlineReader(io.RawIOBase):
    """Socket reads that all share one deadline (set per request by the handler)."""

    def __init__(self, conn: socket.socket) -> None:
        self._conn = conn
        self.deadline = time.monotonic() + REQUEST_DEADLINE_SECONDS

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("request deadline passed")
        self._conn.settimeout(remaining)
        return self._conn.recv_into(buffer)


class TokenHandler(JsonRequestHandler):
    server: TokenServer
    server_version = "flashpods-token-service"
    timeout = REQUEST_DEADLINE_SECONDS

    def setup(self) -> None:
        super().setup()
        self._reader = _DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self) -> None:
        self._reader.deadline = time.monotonic() + REQUEST_DEADLINE_SECONDS
        super().handle_one_request()

    def version_string(self) -> str:
        return self.server_version

    def address_string(self) -> str:
        return "unix"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug(format, *args)

    def _send_json(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        self.connection.settimeout(self.timeout)  # the reads' deadline is not the writes'
        self.send_json(status, body, {"Cache-Control": "no-store", **(headers or {})})

    def send_server_error(self, error: ServiceError) -> None:
        if error.status == HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE:
            audit.info(
                "exchange denied status=%d reason=%s spiffe_id=- token=-", error.status, error.code
            )
        self._send_json(error.status, error.body(), {"Connection": "close"})
        self._linger()

    def _linger(self) -> None:
        """Close after an early error without a reset: unread request bytes left in our
        receive buffer would make the kernel send RST, and the client would lose our
        answer. Stop writing, then drain (bounded in time and size)."""
        self.wfile.flush()
        conn = self.connection
        try:
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(1.0)
            drained = 0
            while drained < LINGER_MAX_BYTES and (chunk := conn.recv(65536)):
                drained += len(chunk)
        except OSError:
            pass

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/tokens":
            outcome = self.server.exchange.run(self.headers.get("Authorization"))
            audit.info("%s", outcome.audit_line())
            self._send_json(outcome.status, outcome.body, {"Server-Timing": _timing(outcome)})
        elif path == "/health":
            status, body = self.server.exchange.health()
            self._send_json(status, body)
        else:
            err = ServiceError(404, "not_found", f"no route {path}; use GET /tokens or /health")
            self._send_json(err.status, err.body())

    def _method_not_allowed(self) -> None:
        err = ServiceError(405, "method_not_allowed", "only GET /tokens and GET /health")
        self._send_json(err.status, err.body(), {"Allow": "GET"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _method_not_allowed


def _timing(outcome: Outcome) -> str:
    """Where the time went (bench/token_exchange.py splits SPIRE validation from ours)."""
    return (
        f"validate;dur={outcome.validate_seconds * 1000:.3f}, "
        f"total;dur={outcome.total_seconds * 1000:.3f}"
    )
