"""A minimal client for the token service's unix socket (tests, benchmark, lab checks)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flashpods.common.unixhttp import UnixHTTPConnection


@dataclass(frozen=True)
class Response:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]


def request(conn: UnixHTTPConnection, path: str, headers: dict[str, str] | None = None) -> Response:
    conn.request("GET", path, headers=headers or {})
    resp = conn.getresponse()
    raw = resp.read()
    return Response(resp.status, json.loads(raw) if raw else {}, dict(resp.getheaders()))


def exchange(socket_path: Path, jwt: str | None, timeout: float = 10.0) -> Response:
    """GET /tokens with `Authorization: Bearer <jwt>` (no header when jwt is None)."""
    conn = UnixHTTPConnection(socket_path, timeout)
    try:
        headers = {} if jwt is None else {"Authorization": f"Bearer {jwt}"}
        return request(conn, "/tokens", headers)
    finally:
        conn.close()
