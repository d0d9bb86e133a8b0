"""The HTTP layer: routing table, auth, rate limit, request ids, error rendering.

Thin on purpose: each route is a small function over the service objects; everything
that can go wrong becomes the JSON error shape (never a traceback, an HTML page or a
host path).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import os
import re
import socket
import sqlite3
import struct
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from flashpods.api.artifacts import Download, check_name
from flashpods.api.ids import is_request_id
from flashpods.api.logfollow import LogStream, open_follow, parse_follow
from flashpods.api.logs import job_output, log_path, parse_tail
from flashpods.api.validation import parse_upload_create
from flashpods.common.errors import ServiceError
from flashpods.common.jobstates import STATUS_FILTERS
from flashpods.common.jsonhttp import JsonRequestHandler, bearer_credential
from flashpods.common.limits import DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT
from flashpods.common.numbers import parse_decimal

if TYPE_CHECKING:
    from flashpods.api.server import App

log = logging.getLogger("flashpods.api.http")

try:
    VERSION = metadata.version("flashpods")
except metadata.PackageNotFoundError:  # running from a source tree
    VERSION = "0.0.0"


@dataclass
class Request:
    method: str
    path: str
    params: dict[str, str]
    query: dict[str, list[str]]
    headers: Any
    body: bytes
    request_id: str

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None

    def json_object(self) -> dict[str, Any]:
        try:
            value = json.loads(self.body, parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError):
            raise ServiceError(400, "invalid_json", "The request body is not valid JSON") from None
        if not isinstance(value, dict):
            raise ServiceError(400, "invalid_json", "The request body must be a JSON object")
        return value


def _reject_constant(name: str) -> Any:
    """NaN and Infinity are not JSON (Python's parser accepts them by default)."""
    raise ValueError(f"{name} is not valid JSON")


@dataclass
class Response:
    status: int
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    download: Download | None = None
    stream: LogStream | None = None  # sent chunked, as it is produced


Handler = Callable[["App", Request], Response]


@dataclass(frozen=True)
class Route:
    method: str
    template: str  # as in docs/openapi.yaml
    handler: Handler
    public: bool = False

    @property
    def regex(self) -> re.Pattern[str]:
        # {name} (the artifact path) may contain '/', every other parameter may not.
        pattern = re.sub(
            r"\{(\w+)\}",
            lambda m: f"(?P<{m[1]}>.+)" if m[1] == "name" else f"(?P<{m[1]}>[^/]+)",
            self.template,
        )
        return re.compile(pattern)


# --- route handlers ----------------------------------------------------------------------


def health(app: App, request: Request) -> Response:
    uptime = round(time.monotonic() - app.started, 3)
    return Response(200, {"status": "healthy", "version": VERSION, "uptime_seconds": uptime})


def create_upload(app: App, request: Request) -> Response:
    upload_id, base_id = parse_upload_create(request.json_object())
    return Response(201, app.uploads.create(upload_id, base_id))


def finalize_upload(app: App, request: Request) -> Response:
    return Response(200, app.uploads.finalize(request.params["upload_id"]))


def get_upload(app: App, request: Request) -> Response:
    return Response(200, app.uploads.get(request.params["upload_id"]))


def delete_upload(app: App, request: Request) -> Response:
    app.uploads.delete(request.params["upload_id"])
    return Response(204)


def create_job(app: App, request: Request) -> Response:
    body, created = app.jobs.create(request.json_object())
    return Response(201 if created else 200, body)


def list_jobs(app: App, request: Request) -> Response:
    status = request.arg("status")
    status = "all" if status is None else status
    if status not in STATUS_FILTERS:
        raise ServiceError(
            400,
            "invalid_parameter",
            f"status must be one of {', '.join(STATUS_FILTERS)}",
            {"parameter": "status"},
        )
    raw_limit = request.arg("limit")
    limit = DEFAULT_LIST_LIMIT if raw_limit is None else parse_decimal(raw_limit)
    if limit is None or not 1 <= limit <= MAX_LIST_LIMIT:
        raise ServiceError(
            400,
            "invalid_parameter",
            f"limit must be an integer from 1 to {MAX_LIST_LIMIT}",
            {"parameter": "limit"},
        )
    return Response(200, app.jobs.list(status, limit))


def get_job(app: App, request: Request) -> Response:
    return Response(200, app.jobs.get(request.params["job_id"]))


def cancel_job(app: App, request: Request) -> Response:
    return Response(200, app.jobs.cancel(request.params["job_id"]))


def job_output_route(app: App, request: Request) -> Response:
    follow = parse_follow(request.query)
    if follow is None:
        count = parse_tail(request.arg("tail"))
        row = app.jobs.require(request.params["job_id"])
        return Response(200, job_output(row, log_path(app.config, row["id"]), count))
    job_id = request.params["job_id"]
    row = app.jobs.require(job_id)
    stream, headers = open_follow(
        app.logbus, row, log_path(app.config, job_id), follow, lambda: app.jobs.row(job_id)
    )
    return Response(200, headers=headers, stream=stream)


def list_artifacts(app: App, request: Request) -> Response:
    row = app.jobs.require(request.params["job_id"])
    return Response(200, app.artifacts.listing(row))


def download_artifact(app: App, request: Request) -> Response:
    name = request.params["name"]
    check_name(name)
    row = app.jobs.require(request.params["job_id"])
    download = app.artifacts.open(row, name, request.headers.get("Range"))
    return Response(206 if download.partial else 200, download=download)


ROUTES: tuple[Route, ...] = (
    Route("GET", "/health", health, public=True),
    Route("POST", "/uploads", create_upload),
    Route("POST", "/uploads/{upload_id}/finalize", finalize_upload),
    Route("GET", "/uploads/{upload_id}", get_upload),
    Route("DELETE", "/uploads/{upload_id}", delete_upload),
    Route("POST", "/jobs", create_job),
    Route("GET", "/jobs", list_jobs),
    Route("GET", "/jobs/{job_id}", get_job),
    Route("DELETE", "/jobs/{job_id}", cancel_job),
    Route("GET", "/jobs/{job_id}/output", job_output_route),
    Route("GET", "/jobs/{job_id}/artifacts", list_artifacts),
    Route("GET", "/jobs/{job_id}/artifacts/{name}", download_artifact),
)
_COMPILED = [(route, route.regex) for route in ROUTES]


def resolve(method: str, path: str) -> tuple[Route | None, dict[str, str], list[str]]:
    """(route, decoded params, methods allowed on this path)."""
    allowed: list[str] = []
    for route, regex in _COMPILED:
        match = regex.fullmatch(path)
        if match is None:
            continue
        if route.method == method:
            return route, {k: unquote(v) for k, v in match.groupdict().items()}, []
        allowed.append(route.method)
    return None, {}, allowed


def content_disposition(filename: str) -> str:
    """`attachment; filename="…"`, with an RFC 6266 `filename*` when it is not plain ASCII."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in filename)
    if fallback == filename:
        return f'attachment; filename="{filename}"'
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def method_not_allowed(method: str, allowed: list[str]) -> ServiceError:
    return ServiceError(
        405,
        "method_not_allowed",
        f"{method[:20]} is not allowed here",
        {"allowed": allowed},
        headers={"Allow": ", ".join(allowed)},
    )


def check_auth(header: str | None, token: str) -> None:
    credential = bearer_credential(header)
    if not hmac.compare_digest(credential.encode(), token.encode()):
        raise ServiceError(401, "invalid_token", "The bearer token is not valid")


class FileShrankError(Exception):
    """The file ended before the bytes promised in Content-Length."""


def send_file(sock: socket.socket, fd: int, offset: int, count: int, stall_seconds: float) -> None:
    """`count` bytes of `fd` from `offset` to `sock`, zero-copy from the page cache.

    os.sendfile on the socket in blocking mode: each call moves as much as the kernel
    takes, where socket.sendfile on a socket with a timeout polls and calls sendfile
    once per send buffer's worth (measured 0.8x nginx's throughput that way). A TCP
    socket is corked meanwhile (TCP_CORK, what nginx's `tcp_nopush` sets with sendfile):
    only full segments leave, and the tail goes when it is uncorked. Measured on
    loopback, 256 MiB: 160 ms without, 120 ms with, nginx 113 ms. A stalled client
    cannot hold the thread: SO_SNDTIMEO ends a call that moves nothing for
    `stall_seconds` (EAGAIN, raised as TimeoutError).
    """
    previous = sock.gettimeout()
    sock.settimeout(None)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(stall_seconds))
    _cork(sock, True)
    try:
        while count > 0:
            try:
                sent = os.sendfile(sock.fileno(), fd, offset, count)
            except BlockingIOError:
                raise TimeoutError(f"the client took nothing for {stall_seconds:g} s") from None
            if sent == 0:
                raise FileShrankError(f"{count} bytes missing at offset {offset}")
            offset += sent
            count -= sent
    finally:
        with contextlib.suppress(OSError):  # the client may be gone; nothing is left to send
            _cork(sock, False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(0))
        sock.settimeout(previous)


def _cork(sock: socket.socket, on: bool) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6):  # TCP_CORK is TCP's alone
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, int(on))


def _timeval(seconds: float) -> bytes:
    return struct.pack("ll", int(seconds), int(seconds % 1 * 1_000_000))


# --- the request handler ----------------------------------------------------------------


class RequestHandler(JsonRequestHandler):
    server_version = "flashpods-api"
    timeout = 120  # idle keep-alive connections are closed after this
    server: Any  # FlashpodsHTTPServer; typed loosely to avoid an import cycle

    def setup(self) -> None:
        super().setup()
        # Small responses go out in one segment; without this, Nagle plus delayed ACKs
        # add ~40 ms to every keep-alive request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle_one_request(self) -> None:
        if self.server.closing:
            self.close_connection = True
            return
        self.server.mark(self, busy=False)
        super().handle_one_request()

    def parse_request(self) -> bool:
        self.server.mark(self, busy=True)
        return super().parse_request()

    def finish(self) -> None:
        self.server.forget(self)
        super().finish()

    def do_GET(self) -> None:
        self.dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def send_server_error(self, error: ServiceError) -> None:
        if error.status == 501:  # TRACE, CONNECT, PROPFIND…: no route has the method
            _, _, allowed = resolve(self.command, urlsplit(self.path).path)
            error = (
                method_not_allowed(self.command, allowed)
                if allowed
                else ServiceError(404, "not_found", "No such route")
            )
        self._send_json(error.status, error.body(), dict(error.headers), str(uuid.uuid4()))

    def dispatch(self) -> None:
        app: App = self.server.app
        incoming = self.headers.get("X-Request-Id", "")
        request_id = incoming if is_request_id(incoming) else str(uuid.uuid4())
        limit_headers: dict[str, str] = {}
        try:
            # Read the body first, whatever happens next, so the connection stays in sync.
            body = self._read_body(app.config.max_body_bytes)
            if app.limiter.enabled:
                decision = app.limiter.take(self.client_address[0])
                limit_headers = {
                    "X-RateLimit-Limit": str(decision.limit),
                    "X-RateLimit-Remaining": str(decision.remaining),
                    "X-RateLimit-Reset": str(decision.reset_epoch),
                }
                if not decision.allowed:
                    retry = max(1, int(decision.retry_after + 0.999))
                    raise ServiceError(
                        429,
                        "rate_limited",
                        "Too many requests; slow down",
                        {"retry_after_seconds": round(decision.retry_after, 3)},
                        headers={"Retry-After": str(retry)},
                    )
            response = self._route(app, request_id, body)
        except ServiceError as error:
            if error.cause is not None:  # the operator's half of what the body scrubbed
                log.error("request %s: %s: %s", request_id, error.code, error.cause)
            response = Response(error.status, error.body(), dict(error.headers))
        except sqlite3.Error:
            log.exception("request %s: database error", request_id)
            response = Response(
                500, ServiceError(500, "database_error", "The database failed").body()
            )
        except Exception:
            log.exception("request %s: unexpected failure", request_id)
            response = Response(
                500,
                ServiceError(
                    500, "internal_error", f"Internal error (request {request_id})"
                ).body(),
            )
        if self.server.closing:
            self.close_connection = True
        headers = {**limit_headers, **response.headers}
        if response.download is not None:
            self._send_download(response.status, response.download, headers, request_id)
        elif response.stream is not None:
            self._send_stream(response.status, response.stream, headers, request_id)
        else:
            self._send_json(response.status, response.body, headers, request_id)
        log.info(
            "%s %s %s -> %d (request %s)",
            self.client_address[0],
            self.command,
            urlsplit(self.path).path[:200],
            response.status,
            request_id,
        )

    def _route(self, app: App, request_id: str, body: bytes) -> Response:
        url = urlsplit(self.path)
        route, params, allowed = resolve(self.command, url.path)
        if route is None or not route.public:
            check_auth(self.headers.get("Authorization"), app.config.token)
        if route is None:
            if allowed:
                raise method_not_allowed(self.command, allowed)
            raise ServiceError(404, "not_found", "No such route")
        request = Request(
            self.command,
            url.path,
            params,
            parse_qs(url.query, keep_blank_values=True),
            self.headers,
            body,
            request_id,
        )
        return route.handler(app, request)

    def _read_body(self, limit: int) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise ServiceError(411, "length_required", "Send the body with a Content-Length")
        raw = self.headers.get("Content-Length")
        length = 0 if raw is None else parse_decimal(raw.strip())
        if length is None:
            self.close_connection = True
            raise ServiceError(400, "bad_request", "Content-Length is not a decimal number")
        if length > limit:
            # The body stays unread, so this connection cannot carry another request.
            self.close_connection = True
            raise ServiceError(
                413, "payload_too_large", f"The body exceeds {limit} bytes", {"max_bytes": limit}
            )
        return self.rfile.read(length) if length else b""

    def _common_headers(self, request_id: str, headers: dict[str, str]) -> dict[str, str]:
        common = {"X-Request-Id": request_id, **headers}
        if self.close_connection:
            common["Connection"] = "close"
        return common

    def _send_json(
        self, status: int, body: dict[str, Any] | None, headers: dict[str, str], request_id: str
    ) -> None:
        self.send_json(status, body, self._common_headers(request_id, headers))

    def _send_stream(
        self, status: int, stream: LogStream, headers: dict[str, str], request_id: str
    ) -> None:
        """Chunked transfer: each piece goes out as soon as it exists (TCP_NODELAY)."""
        try:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Transfer-Encoding", "chunked")
            for name, value in self._common_headers(request_id, headers).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.flush()
            if self.command == "HEAD":
                return
            for piece in stream.body(self.connection.fileno()):
                self.wfile.write(piece)
                self.wfile.flush()
        except (TimeoutError, ConnectionError):
            self.close_connection = True  # the client went away; its place is freed below
        except Exception:
            # Headers are out: all that is left is to end the connection mid-body, which
            # the client sees as a broken stream and resumes from its offset.
            log.exception("request %s: following the log failed", request_id)
            self.close_connection = True
        finally:
            stream.close()

    def _send_download(
        self, status: int, download: Download, headers: dict[str, str], request_id: str
    ) -> None:
        disposition = content_disposition(download.filename)
        with open(download.fd, "rb", closefd=True) as handle:
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(download.length))
            self.send_header("Content-Disposition", disposition)
            self.send_header("Accept-Ranges", "bytes")
            if download.partial:
                self.send_header(
                    "Content-Range", f"bytes {download.start}-{download.end}/{download.size}"
                )
            for name, value in self._common_headers(request_id, headers).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.flush()  # the headers, before sendfile writes past the buffer
            if download.length:
                try:
                    send_file(
                        self.connection,
                        handle.fileno(),
                        download.start,
                        download.length,
                        self.timeout,
                    )
                except (TimeoutError, ConnectionError, FileShrankError):
                    self.close_connection = True
