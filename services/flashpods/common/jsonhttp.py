"""What the API and the token service share over http.server: the JSON response, the JSON
form of http.server's own errors, and the bearer header.

Error body: ServiceError.body() (api.md). The codes of http.server's own refusals and of
the Authorization header are the same in both services (docs/openapi.yaml, docs/identity.md).
"""

from __future__ import annotations

import json
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any

from flashpods.common.errors import ServiceError

# http.server refuses these itself, before a handler runs (send_error).
HTTP_SERVER_ERROR_CODES = {
    HTTPStatus.BAD_REQUEST: "bad_request",
    HTTPStatus.REQUEST_URI_TOO_LONG: "uri_too_long",
    HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE: "headers_too_large",
    HTTPStatus.NOT_IMPLEMENTED: "method_not_allowed",  # a method with no do_<METHOD>
    HTTPStatus.HTTP_VERSION_NOT_SUPPORTED: "http_version_not_supported",
}


def http_server_error(code: int, message: str | None) -> ServiceError:
    """http.server's own refusal (bad request line, header too long, …) as our error."""
    status = HTTPStatus(code)
    return ServiceError(
        code, HTTP_SERVER_ERROR_CODES.get(status, "bad_request"), message or status.phrase
    )


def bearer_credential(header: str | None, what: str = "token") -> str:
    """The credential of `Authorization: Bearer <credential>`: 401 missing_authorization
    without the header, 401 malformed_authorization when it is not exactly that shape."""
    if header is None or not header.strip():
        raise ServiceError(
            401, "missing_authorization", f"Authorization: Bearer <{what}> is required"
        )
    scheme, _, credential = header.strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential or " " in credential:
        raise ServiceError(
            401, "malformed_authorization", f"Authorization must be 'Bearer <{what}>'"
        )
    return credential


class JsonRequestHandler(BaseHTTPRequestHandler):
    """http.server's handler answering in JSON, one write per response."""

    protocol_version = "HTTP/1.1"
    sys_version = ""
    # Buffered writes: a response's status line, headers and body leave in one segment
    # when send_json flushes (unbuffered, http.server writes the headers on their own).
    wbufsize = 64 * 1024

    def send_json(self, status: int, body: dict[str, Any] | None, headers: dict[str, str]) -> None:
        payload = b"" if status == 204 or body is None else json.dumps(body).encode()
        self.send_response(status)
        if payload:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if payload and self.command != "HEAD":
            self.wfile.write(payload)
        self.wfile.flush()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors in our JSON shape; the connection closes after them."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # unparsable line: answer with a status line
            self.request_version = "HTTP/1.0"
        self.send_server_error(http_server_error(code, message))

    def send_server_error(self, error: ServiceError) -> None:
        """How this service answers send_error's error (headers, logging, draining)."""
        self.send_json(error.status, error.body(), {"Connection": "close"})
