"""A small scripted HTTP server standing in for the API where a test needs exact
answers the real API cannot be made to give on demand (a dropped connection, the
fifth 503 in a row, a hostile artifact name). Everything else is tested against the
real API in integration/client/."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from flashpods.client.retry import RetryPolicy
from flashpods.client.sdk import Flashpods, PollSchedule, RetryEvent

TOKEN = "t0k3n"


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict -> JSON; bytes -> raw
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False  # close the connection without answering
    cut_after: int | None = None  # send only this many body bytes, then close
    chunks: list[bytes] | None = None  # body sent chunked, piece by piece (as a follow)
    unfinished: bool = False  # chunked: close before the last chunk (a broken stream)


def error(status: int, code: str, **headers: str) -> Reply:
    return Reply(status, {"error": code, "message": f"{code} happened"}, headers)


def log_piece(*chunks: bytes, complete: bool = False, unfinished: bool = False) -> Reply:
    """One answer to GET .../output?follow=true: chunks, then the end of the body (or, if
    unfinished, the connection closes before it)."""
    headers = {"X-Log-Complete": "true"} if complete else {}
    return Reply(200, None, headers, chunks=list(chunks), unfinished=unfinished)


def output_replies(tail: Reply | None, *follow: Reply) -> Callable[[Seen], Reply]:
    """GET .../output: `tail` for a tail request, the `follow` replies in order (the last
    repeats) for follow=true."""
    queue = list(follow)

    def reply(seen: Seen) -> Reply:
        if "follow=true" not in seen.path:
            return tail or error(404, "not_found")
        return queue.pop(0) if len(queue) > 1 else queue[0]

    return reply


def query(seen: Seen) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(seen.path).query))


class Script:
    """Routes ("GET", "/jobs/x") -> replies, served in order; the last one repeats."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], list[Reply | Callable[[Seen], Reply]]] = {}
        self.seen: list[Seen] = []
        self.lock = threading.Lock()

    def on(self, method: str, path: str, *replies: Reply | Callable[[Seen], Reply]) -> None:
        self.routes[(method, path)] = list(replies)

    def next(self, request: Seen) -> Reply:
        with self.lock:
            self.seen.append(request)
            queue = self.routes.get((request.method, request.path.split("?")[0]))
            if not queue:
                return error(404, "not_found")
            reply = queue.pop(0) if len(queue) > 1 else queue[0]
        return reply(request) if callable(reply) else reply

    def requests(self, method: str, path: str) -> list[Seen]:
        return [s for s in self.seen if s.method == method and s.path.split("?")[0] == path]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    script: Script

    def log_message(self, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        seen = Seen(self.command, self.path, dict(self.headers.items()), body)
        reply = self.script.next(seen)
        if reply.drop:
            self.close_connection = True
            return
        payload = (
            reply.body
            if isinstance(reply.body, bytes)
            else (b"" if reply.body is None else json.dumps(reply.body).encode())
        )
        if reply.chunks is not None:
            self._send_chunked(reply)
            return
        self.send_response(reply.status)
        if not isinstance(reply.body, bytes):
            self.send_header("Content-Type", "application/json")
        for key, value in reply.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if reply.cut_after is not None:
            self.wfile.write(payload[: reply.cut_after])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(payload)

    def _send_chunked(self, reply: Reply) -> None:
        self.send_response(reply.status)
        self.send_header("Transfer-Encoding", "chunked")
        for key, value in reply.headers.items():
            self.send_header(key, value)
        self.end_headers()
        for piece in reply.chunks or []:
            self.wfile.write(b"%x\r\n%b\r\n" % (len(piece), piece))
            self.wfile.flush()
        if reply.unfinished:
            self.close_connection = True
            return
        self.wfile.write(b"0\r\n\r\n")

    do_GET = do_POST = do_DELETE = _serve


@dataclass
class Stub:
    script: Script
    url: str
    sleeps: list[float]
    retries: list[RetryEvent]

    def client(self, **kwargs: Any) -> Flashpods:
        kwargs.setdefault("rsync_url", "rsync://127.0.0.1:1/uploads")
        return Flashpods(
            self.url,
            TOKEN,
            sleep=self.sleeps.append,
            on_retry=self.retries.append,
            retry=RetryPolicy(),
            poll=PollSchedule(first=0.01, ceiling=0.01),
            timeout=(2.0, 5.0),
            **kwargs,
        )


@contextmanager
def running_stub() -> Iterator[Stub]:
    script = Script()
    handler = type("Handler", (_Handler,), {"script": script})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield Stub(script, f"http://127.0.0.1:{server.server_port}", [], [])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
