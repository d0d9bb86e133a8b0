"""Job log capture: conmon's k8s-file log → /var/log/flashpods/{job_id}.log.

conmon writes one record per read of the container's stdout/stderr pipes:
`<RFC3339Nano time> <stdout|stderr> <P|F> <bytes>\\n`, where P marks a partial line that
the next record of the same stream continues. Both streams are in one file, in the
order conmon read them, so the interleaving is exact; the times are nanosecond precise.

The job log has one line per job line, `[HH:MM:SS.mmm] ` (UTC, the time the line began)
then the bytes. Capture is deterministic in the raw file's content, which makes resuming
after an API restart exact: replay the raw file and skip as many lines as the job log
already holds. Past the size limit one marker line is appended and capture stops; the
job keeps running (conmon's own file is bounded by its max-size and rotates).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from flashpods.api.runtime import LOG_TRUNCATED_MARKER
from flashpods.common.timefmt import log_prefix, utc_now

log = logging.getLogger(__name__)

# A job that never prints a newline (progress bars with \r) still produces bounded lines.
MAX_LINE_BYTES = 256 * 1024
POLL_SECONDS = 0.1


def format_size(limit_bytes: int) -> str:
    """`50 MB` for the marker line (binary units, as the limit is configured in bytes)."""
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if limit_bytes >= size and limit_bytes % size == 0:
            return f"{limit_bytes // size} {unit}"
    return f"{limit_bytes} bytes"


def truncation_line(limit_bytes: int, moment: datetime) -> bytes:
    marker = LOG_TRUNCATED_MARKER.format(limit=format_size(limit_bytes))
    return f"{log_prefix(moment)}{marker}\n".encode()


def parse_conmon_time(text: bytes) -> datetime:
    """`2026-11-25T21:34:32.579366452+00:00` (conmon) → aware datetime, µs precision."""
    raw = text.decode("ascii")
    date_part, _, rest = raw.partition(".")
    if not rest:  # no fraction
        return datetime.fromisoformat(raw).astimezone(UTC)
    digits = ""
    for ch in rest:
        if not ch.isdigit():
            break
        digits += ch
    zone = rest[len(digits) :]
    return datetime.fromisoformat(f"{date_part}.{digits[:6].ljust(6, '0')}{zone}").astimezone(UTC)


@dataclass
class LineAssembler:
    """Turns conmon records into whole lines, per stream (pure, deterministic)."""

    pending: dict[bytes, tuple[datetime, bytearray]] = field(default_factory=dict)

    def feed(self, record: bytes) -> list[tuple[datetime, bytes]]:
        """One record without its trailing newline; returns the lines it completes."""
        parts = record.split(b" ", 3)
        if len(parts) < 3:
            return []  # not a conmon record (a torn write cannot happen, but be safe)
        stamp, stream, flag = parts[0], parts[1], parts[2]
        content = parts[3] if len(parts) == 4 else b""
        try:
            moment = parse_conmon_time(stamp)
        except ValueError:
            return []
        started, buf = self.pending.pop(stream, (moment, bytearray()))
        buf += content
        out: list[tuple[datetime, bytes]] = []
        while len(buf) > MAX_LINE_BYTES:
            out.append((started, bytes(buf[:MAX_LINE_BYTES])))
            del buf[:MAX_LINE_BYTES]
        if flag == b"F":
            out.append((started, bytes(buf)))
        elif buf:
            self.pending[stream] = (started, buf)
        return out

    def flush(self) -> list[tuple[datetime, bytes]]:
        """The container ended: its unterminated last lines become lines too."""
        out = sorted(((t, bytes(b)) for t, b in self.pending.values()), key=lambda x: x[0])
        self.pending.clear()
        return out


@dataclass(frozen=True)
class LogState:
    """What an existing job log already holds (for resuming)."""

    lines: int
    size: int
    truncated: bool


def inspect_log(path: Path, limit_bytes: int) -> LogState:
    """Count the lines of an existing job log; cut a torn last line (a crash mid-write)."""
    if not path.exists():
        return LogState(0, 0, False)
    with path.open("r+b") as fh:
        data = fh.read()
        if data and not data.endswith(b"\n"):
            data = data[: data.rfind(b"\n") + 1]
            fh.truncate(len(data))
    marker = LOG_TRUNCATED_MARKER.format(limit=format_size(limit_bytes)).encode()
    last = data.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    return LogState(data.count(b"\n"), len(data), bool(data) and last.endswith(marker))


def iter_records(chunk: bytes, carry: bytearray) -> Iterator[bytes]:
    """Split raw bytes into records; an incomplete tail stays in `carry`."""
    carry += chunk
    start = 0
    while True:
        end = carry.find(b"\n", start)
        if end < 0:
            break
        yield bytes(carry[start:end])
        start = end + 1
    del carry[:start]


class LogCapture:
    """Follows one container's raw log into its job log, in a thread of its own."""

    def __init__(self, raw_path: Path, log_path: Path, limit_bytes: int) -> None:
        self.raw_path = raw_path
        self.log_path = log_path
        self.limit_bytes = limit_bytes
        self._container_ended = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"log-{log_path.stem}", daemon=True)
        self.truncated = False
        self._unreadable = False

    def start(self) -> None:
        self._thread.start()

    def finish(self, timeout: float = 30.0) -> None:
        """The container has exited: read what conmon wrote, flush partial lines, stop."""
        self._container_ended.set()
        self._thread.join(timeout)

    def abandon(self) -> None:
        """Stop without waiting for the container (runtime shutdown)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _run(self) -> None:
        try:
            self._follow()
        except Exception:
            log.exception("log capture of %s failed", self.log_path.name)

    def _follow(self) -> None:
        state = inspect_log(self.log_path, self.limit_bytes)
        if state.truncated:
            self.truncated = True
            return
        skip, size = state.lines, state.size
        assembler = LineAssembler()
        carry = bytearray()
        with self.log_path.open("ab") as out:

            def emit(lines: list[tuple[datetime, bytes]]) -> bool:
                """Write lines; False once the limit is reached (capture is over)."""
                nonlocal skip, size
                for moment, content in lines:
                    if skip:
                        skip -= 1
                        continue
                    entry = log_prefix(moment).encode() + content + b"\n"
                    if size + len(entry) > self.limit_bytes:
                        out.write(truncation_line(self.limit_bytes, utc_now()))
                        out.flush()
                        self.truncated = True
                        return False
                    out.write(entry)
                    size += len(entry)
                return True

            raw = self._open_raw()
            try:
                while not self._stop.is_set():
                    ended = self._container_ended.is_set()  # read before the last drain
                    chunk = raw.read(1 << 16) if raw else b""
                    if chunk:
                        for record in iter_records(chunk, carry):
                            if not emit(assembler.feed(record)):
                                return
                        continue
                    out.flush()
                    rotated = self._reopen_if_rotated(raw)
                    if self._unreadable:
                        # What follows cannot be captured: say so, as for the size limit.
                        out.write(truncation_line(self.limit_bytes, utc_now()))
                        self.truncated = True
                        return
                    if rotated is not None:
                        if raw:
                            raw.close()
                        raw = rotated
                        continue
                    if ended:
                        emit(assembler.flush())
                        return
                    self._container_ended.wait(POLL_SECONDS)
            finally:
                out.flush()
                if raw:
                    raw.close()

    def _open_raw(self) -> BinaryIO | None:
        try:
            return self.raw_path.open("rb")
        except FileNotFoundError:
            return None

    def _reopen_if_rotated(self, raw: BinaryIO | None) -> BinaryIO | None:
        """conmon replaces its file past max-size; continue in the new one."""
        try:
            current = os.stat(self.raw_path)
        except FileNotFoundError:
            return None
        if raw is not None and os.fstat(raw.fileno()).st_ino == current.st_ino:
            return None
        try:
            return self.raw_path.open("rb")
        except OSError:
            # e.g. a rootful conmon recreated it as root: what follows cannot be read.
            log.warning("raw log of %s no longer readable", self.log_path.name)
            self._unreadable = True
            return None
