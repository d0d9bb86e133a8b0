"""HTTP over a unix socket with the standard library (podman's API, the token service)."""

from __future__ import annotations

import http.client
import socket
from pathlib import Path


class UnixHTTPConnection(http.client.HTTPConnection):
    """One connection to the HTTP server on `socket_path`; `timeout` None blocks for good
    (a request that lasts as long as what it waits for)."""

    def __init__(self, socket_path: Path, timeout: float | None = 10.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(str(self.socket_path))
        except BaseException:
            sock.close()
            raise
        self.sock = sock
