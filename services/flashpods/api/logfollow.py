"""GET /jobs/{id}/output?follow=true: a job's log pushed to the client as it grows.

The body is the log's bytes from a byte offset, sent as HTTP/1.1 chunks the moment they
are written, until the log is complete (the job ended and everything it printed is in
the file), `timeout` seconds passed, or the server stops. A client resumes with
offset = start + bytes received; `X-Log-Complete: true` on a response says that it
holds the log up to its end, so a client following to the end stops after it.

No polling: a follower sleeps on `LogBus` until the log capture reports new bytes
(JobHooks.on_output) or the job's status changes (Jobs notifies), re-reading the file
only then. The log is complete once the job is `settled` (jobstate.py). Each follower holds
one of the HTTP server's threads for at most `timeout` seconds, and at most
`max_followers` follow at once (503 beyond, with Retry-After).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flashpods.api.jobstate import settled
from flashpods.api.logbus import READ_BYTES, LogBus, Parked, Subscription, chunk
from flashpods.api.logs import logs_deleted, logs_gone
from flashpods.common.errors import ServiceError
from flashpods.common.limits import DEFAULT_FOLLOW_SECONDS, MAX_FOLLOW_SECONDS
from flashpods.common.numbers import parse_decimal


@dataclass(frozen=True)
class FollowRequest:
    offset: int
    timeout: float


def parse_follow(query: dict[str, list[str]]) -> FollowRequest | None:
    """None unless follow=true; 400 for a bad or misplaced follow parameter."""

    def arg(name: str) -> str | None:
        values = query.get(name)
        return values[-1] if values else None

    follow = arg("follow")
    if follow not in (None, "true", "false"):
        raise _invalid("follow", "follow must be true or false")
    if follow != "true":
        for name in ("offset", "timeout"):
            if arg(name) is not None:
                raise _invalid(name, f"{name} is only allowed with follow=true")
        return None
    if arg("tail") is not None:
        raise _invalid("tail", "tail cannot be combined with follow=true (use offset)")
    offset = parse_decimal(arg("offset") or "0")
    if offset is None:
        raise _invalid("offset", "offset must be a byte offset (a non-negative integer)")
    timeout = parse_decimal(arg("timeout") or str(DEFAULT_FOLLOW_SECONDS))
    if timeout is None or not 1 <= timeout <= MAX_FOLLOW_SECONDS:
        raise _invalid(
            "timeout", f"timeout must be an integer from 1 to {MAX_FOLLOW_SECONDS} (seconds)"
        )
    return FollowRequest(offset, float(timeout))


def _invalid(parameter: str, message: str) -> ServiceError:
    return ServiceError(400, "invalid_parameter", message, {"parameter": parameter})


class LogStream:
    """The body of one follow response (body()), after the headers are sent."""

    def __init__(
        self,
        subscription: Subscription,
        path: Path,
        offset: int,
        timeout: float,
        load_row: Callable[[], dict[str, Any] | None],
    ) -> None:
        self.subscription = subscription
        self.path = path
        self.offset = offset
        self.deadline = time.monotonic() + timeout
        self.load_row = load_row
        self._fd: int | None = None

    def _read(self) -> bytes:
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return b""  # not started yet, or its log was never created
        data = os.pread(self._fd, READ_BYTES, self.offset)
        self.offset += len(data)
        return data

    def close(self) -> None:
        """Idempotent; the follower's place is free again."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.subscription.release()

    def _last_chunk(self) -> bytes:
        """The end of the body. The place is given back first: a client that has read
        the end may follow again at once and must not meet its own old place."""
        self.close()
        return b"0\r\n\r\n"

    def body(self, sock_fd: int) -> Iterator[bytes]:
        """The response body's bytes, chunk-encoded, to write to the socket `sock_fd` in
        order; the consumer writes each piece out before asking for the next. While it
        waits, the bus may write to `sock_fd` for it (parked; only on a non-blocking
        socket, where such a write can never hold up the notifier)."""
        can_park = not os.get_blocking(sock_fd)
        checked: int | None = None  # the status_version the job's row was read at
        try:
            while True:
                # Taken before reading: a write after the read bumps it, so no wake-up
                # falls between reading the file and going to sleep.
                seen = self.subscription.seen()
                data = self._read()
                if data:
                    yield chunk(data)
                    if len(data) == READ_BYTES:
                        continue  # maybe more; a short read reached the end of the file
                # The database only when the status may have changed, not per new line.
                if checked != seen.status_version:
                    checked = seen.status_version
                    row = self.load_row()
                    if row is None or settled(row):
                        while tail := self._read():  # written just before the status changed
                            yield chunk(tail)
                        yield self._last_chunk()
                        return
                remaining = self.deadline - time.monotonic()
                if remaining <= 0 or self.subscription.bus.closed:
                    yield self._last_chunk()
                    return
                parked = None
                if can_park and self._fd is not None:
                    parked = Parked(self._fd, sock_fd, self.offset)
                self.subscription.wait(seen.version, remaining, parked)
                if parked is not None:
                    self.offset = parked.offset
                    if parked.failed:
                        raise BrokenPipeError("the client went away")
                    if parked.leftover:
                        yield parked.leftover
        finally:
            self.close()


def open_follow(
    bus: LogBus,
    row: dict[str, Any],
    path: Path,
    request: FollowRequest,
    load_row: Callable[[], dict[str, Any] | None],
) -> tuple[LogStream, dict[str, str]]:
    """The stream for a follow request and its headers (410 and 503 before any byte).
    A pending job is followed too: the stream starts when its log does."""
    if logs_gone(row):
        raise logs_deleted()
    subscription = bus.subscribe(row["id"])
    headers = {"X-Log-Offset": str(request.offset), "Cache-Control": "no-store"}
    if settled(row):
        headers["X-Log-Complete"] = "true"
    return LogStream(subscription, path, request.offset, request.timeout, load_row), headers
