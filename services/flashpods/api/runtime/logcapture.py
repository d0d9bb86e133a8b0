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

Capture runs in a process of its own (`python -m flashpods.api.runtime.logcapture`), one
per job: a job printing hundreds of MB keeps that process busy, never the API's GIL (in
a thread, /health's p99 went to 240-450 ms during a 300 MB flood). The API tells it that
the container has ended by writing one byte to its stdin; end of file without that byte
(the API stopped or died) ends it at once, and the next API resumes from the files. It
tells the API of every write to the job log by a byte on its stdout (never blocking: a
byte the API has not read yet already says "grew"), which wakes the log's followers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, BinaryIO

from flashpods.api.runtime import joblog
from flashpods.common.filewatch import FileWatch
from flashpods.common.timefmt import log_prefix, utc_now

log = logging.getLogger(__name__)

# A job that never prints a newline (progress bars with \r) still produces bounded lines.
MAX_LINE_BYTES = 256 * 1024
# Between inotify's wakes: for a rotated or not yet created raw log, or no inotify.
POLL_SECONDS = 0.1
READ_BYTES = 1 << 20
ENDED = b"E"  # parent → capture process: the container has exited, drain and stop
GREW = b"."  # capture process → parent: the job log has new bytes
PREFIX_CACHE_SIZE = 4096


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


def millisecond_key(stamp: bytes) -> bytes:
    """A key that fixes the stamp's millisecond and zone, so all stamps with one key share
    a prefix: its first 23 bytes reach the milliseconds (or, when conmon trimmed the
    fraction's trailing zeros, into the zone) and its last 6 hold the zone (`+00:00`, or
    `Z` and some digits: more keys, still right)."""
    return stamp[:23] + stamp[-6:]


@dataclass
class LineAssembler:
    """Turns conmon records into whole prefixed lines, per stream (pure, deterministic).

    `feed` returns `(stamp, prefix, content)` per completed line; the stamp orders the
    unterminated lines that `flush` returns at the end.
    """

    pending: dict[bytes, tuple[bytes, bytes, bytearray]] = field(default_factory=dict)
    _prefixes: dict[bytes, bytes] = field(default_factory=dict)

    def prefix(self, stamp: bytes) -> bytes | None:
        key = millisecond_key(stamp)
        found = self._prefixes.get(key)
        if found is None:
            try:
                found = log_prefix(parse_conmon_time(stamp)).encode()
            except ValueError:
                return None
            if len(self._prefixes) >= PREFIX_CACHE_SIZE:
                self._prefixes.clear()
            self._prefixes[key] = found
        return found

    def feed(self, record: bytes) -> list[tuple[bytes, bytes, bytes]]:
        """One record without its trailing newline; returns the lines it completes."""
        parts = record.split(b" ", 3)
        if len(parts) < 3:
            return []  # not a conmon record (a torn write cannot happen, but be safe)
        stamp, stream, flag = parts[0], parts[1], parts[2]
        content = parts[3] if len(parts) == 4 else b""
        prefix = self.prefix(stamp)
        if prefix is None:
            return []
        if flag == b"F" and stream not in self.pending and len(content) <= MAX_LINE_BYTES:
            return [(stamp, prefix, content)]  # the common case: one whole line
        started, first_prefix, buf = self.pending.pop(stream, (stamp, prefix, bytearray()))
        buf += content
        out: list[tuple[bytes, bytes, bytes]] = []
        while len(buf) > MAX_LINE_BYTES:
            out.append((started, first_prefix, bytes(buf[:MAX_LINE_BYTES])))
            del buf[:MAX_LINE_BYTES]
        if flag == b"F":
            out.append((started, first_prefix, bytes(buf)))
        elif buf:
            self.pending[stream] = (started, first_prefix, buf)
        return out

    def flush(self) -> list[tuple[bytes, bytes, bytes]]:
        """The container ended: its unterminated last lines become lines too."""
        out = sorted((s, p, bytes(b)) for s, p, b in self.pending.values())
        self.pending.clear()
        return out


@dataclass
class CaptureState:
    """Raw bytes in, job log bytes out, under the size rule (pure; joblog.fits)."""

    limit_bytes: int
    skip: int = 0  # lines the job log already holds (resume)
    size: int = 0
    full: bool = False
    assembler: LineAssembler = field(default_factory=LineAssembler)
    _carry: bytes = b""

    def feed(self, chunk: bytes) -> bytes:
        """Bytes to append for this chunk of the raw file; `full` once the marker is out."""
        records = (self._carry + chunk).split(b"\n")
        self._carry = records.pop()  # an incomplete tail waits for the next chunk
        out: list[bytes] = []
        # A flood is whole lines of one millisecond after another: those take a short path
        # (no partial line waiting, nothing to skip, a known prefix); the rest go through
        # the assembler. Both keep the same size rule.
        assembler = self.assembler
        prefixes = assembler._prefixes
        room = self.limit_bytes - joblog.marker_reserve(self.limit_bytes)
        for record in records:
            parts = record.split(b" ", 3)
            if (
                len(parts) == 4
                and parts[2] == b"F"
                and parts[1] not in assembler.pending
                and not self.skip
            ):
                prefix = prefixes.get(millisecond_key(parts[0]))
                content = parts[3]
                if prefix is not None and len(content) <= MAX_LINE_BYTES:
                    entry = prefix + content + b"\n"
                    if self.size + len(entry) > room:
                        out.append(joblog.truncation_line(self.limit_bytes, utc_now()))
                        self.full = True
                        break
                    out.append(entry)
                    self.size += len(entry)
                    continue
            if not self._emit(assembler.feed(record), out):
                break
        return b"".join(out)

    def finish(self) -> bytes:
        out: list[bytes] = []
        self._emit(self.assembler.flush(), out)
        return b"".join(out)

    def _emit(self, lines: list[tuple[bytes, bytes, bytes]], out: list[bytes]) -> bool:
        for _, prefix, content in lines:
            if self.skip:
                self.skip -= 1
                continue
            entry = len(prefix) + len(content) + 1
            if not joblog.fits(self.size, entry, self.limit_bytes):
                out.append(joblog.truncation_line(self.limit_bytes, utc_now()))
                self.full = True
                return False
            out += (prefix, content, b"\n")
            self.size += entry
        return True


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
    lines = size = 0
    last = b""
    with path.open("r+b") as fh:
        while block := fh.read(READ_BYTES):
            lines += block.count(b"\n")
            size += len(block)
            last = block
        if size and not last.endswith(b"\n"):
            fh.seek(max(0, size - MAX_LINE_BYTES - 4096))
            tail = fh.read()
            size -= len(tail) - (tail.rfind(b"\n") + 1)
            fh.truncate(size)
    return LogState(lines, size, joblog.ends_with_marker(path, limit_bytes))


def _control(fd: int, watch: FileWatch, timeout: float) -> bytes | None:
    """Waits for the API's word or a write to the raw log, at most `timeout` (the raw
    log may be rotated or not there yet, which no watch sees). None: nothing from the
    API yet; ENDED: the container has exited; b"": the API is gone."""
    ready, _, _ = select.select([fd] if watch.fd is None else [fd, watch.fd], [], [], timeout)
    if fd not in ready:
        watch.drain()
        return None
    return os.read(fd, 1)


def _tell_grew(notify_fd: int | None) -> None:
    if notify_fd is None:
        return
    # Full pipe: unread notifications already say it; broken: the API is gone.
    with contextlib.suppress(BlockingIOError, BrokenPipeError):
        os.write(notify_fd, GREW)


def follow(
    raw_path: Path,
    log_path: Path,
    limit_bytes: int,
    control_fd: int,
    notify_fd: int | None = None,
) -> None:
    """The capture process: follow `raw_path` into `log_path` until told to stop; a byte
    to `notify_fd` (non-blocking) after each write to the job log."""
    previous = inspect_log(log_path, limit_bytes)
    if previous.truncated:
        return
    state = CaptureState(limit_bytes, skip=previous.lines, size=previous.size)
    ended = False
    watch = FileWatch()
    with log_path.open("ab", buffering=0) as out:
        raw = _open_raw(raw_path)
        if raw:
            watch.watch(raw_path)
        try:
            while True:
                chunk = raw.read(READ_BYTES) if raw else b""
                if chunk:
                    out.write(state.feed(chunk))
                    _tell_grew(notify_fd)
                    if state.full:
                        return
                    continue
                try:
                    rotated = _reopen_if_rotated(raw_path, raw)
                except PermissionError:
                    # e.g. a rootful conmon recreated it as root: what follows cannot be read.
                    log.warning("raw log of %s no longer readable", log_path.name)
                    out.write(joblog.unreadable_line(utc_now()))
                    _tell_grew(notify_fd)
                    return
                if rotated is not None:
                    if raw:
                        raw.close()
                    raw = rotated
                    watch.watch(raw_path)
                    continue
                if ended:
                    out.write(state.finish())
                    _tell_grew(notify_fd)
                    return
                message = _control(control_fd, watch, POLL_SECONDS)
                if message == b"":
                    return  # abandoned: the next API resumes from the files
                ended = message == ENDED  # read before the last drain
        finally:
            watch.close()
            if raw:
                raw.close()


def _open_raw(raw_path: Path) -> BinaryIO | None:
    try:
        return open(raw_path, "rb", buffering=0)
    except FileNotFoundError:
        return None


def _reopen_if_rotated(raw_path: Path, raw: BinaryIO | None) -> BinaryIO | None:
    """conmon replaces its file past max-size; continue in the new one."""
    try:
        current = os.stat(raw_path)
    except FileNotFoundError:
        return None
    if raw is not None and os.fstat(raw.fileno()).st_ino == current.st_ino:
        return None
    try:
        return open(raw_path, "rb", buffering=0)
    except FileNotFoundError:
        return None
    except IsADirectoryError as exc:
        raise PermissionError(str(exc)) from exc


def _child_environment() -> dict[str, str]:
    # The API's own import path, explicitly: a NixOS wrapper sets sys.path inside its
    # script, not in the environment, so a bare `python -m` would not find the package.
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}


class LogCapture:
    """Follows one container's raw log into its job log, in a process of its own."""

    def __init__(
        self,
        raw_path: Path,
        log_path: Path,
        limit_bytes: int,
        on_growth: Callable[[], None] = lambda: None,
    ) -> None:
        self.raw_path = raw_path
        self.log_path = log_path
        self.limit_bytes = limit_bytes
        self.on_growth = on_growth  # the job log has new bytes (wakes its followers)
        self._process: subprocess.Popen[bytes] | None = None
        self._stopped = False
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the capture process, once; not once finish or abandon came (a shutdown
        that raced the job's start would otherwise leave it running until the API exits)."""
        with self._lock:
            if self._stopped or self._process is not None:
                return
            self._process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    __name__,
                    str(self.raw_path),
                    str(self.log_path),
                    str(self.limit_bytes),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=_child_environment(),
            )
        threading.Thread(
            target=self._relay_growth,
            args=(self._process.stdout,),
            name=f"grew-{self.log_path.stem}",
            daemon=True,
        ).start()

    def _relay_growth(self, pipe: IO[bytes]) -> None:
        """The child's "grew" bytes become on_growth calls (one per read: a burst of
        writes is one wake-up); ends when the child does."""
        with pipe:
            while os.read(pipe.fileno(), 4096):
                try:
                    self.on_growth()
                except Exception:
                    log.exception("log growth of %s: on_growth failed", self.log_path.name)

    def finish(self, timeout: float = 60.0) -> None:
        """The container has exited: read what conmon wrote, flush partial lines, stop."""
        self._stop(ENDED, timeout)

    def abandon(self) -> None:
        """Stop without waiting for the container (runtime shutdown)."""
        self._stop(b"", 5.0)

    def _stop(self, message: bytes, timeout: float) -> None:
        with self._lock:  # finish, abandon and start may race (shutdown during a job)
            self._stopped = True
            process = self._process
            if process is None or process.stdin is None:
                return
            if not process.stdin.closed:
                try:
                    process.stdin.write(message)
                    process.stdin.close()
                except BrokenPipeError:
                    pass  # it has already ended
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("log capture of %s did not stop; killed", self.log_path.name)
            process.kill()
            process.wait()
            inspect_log(self.log_path, self.limit_bytes)  # cut a torn last line
        if process.returncode not in (0, -9):
            log.warning("log capture of %s exited %s", self.log_path.name, process.returncode)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="logcapture: %(levelname)s %(message)s")
    raw_path, log_path, limit = Path(argv[0]), Path(argv[1]), int(argv[2])
    try:
        os.set_blocking(sys.stdout.fileno(), False)
        follow(raw_path, log_path, limit, sys.stdin.fileno(), sys.stdout.fileno())
    except Exception:
        log.exception("log capture of %s failed", log_path.name)
        return 1
    return 0


if __name__ == "__main__":
    status = main(sys.argv[1:])
    # Everything is written by now (the job log unbuffered and closed, stdout by os.write):
    # skip the interpreter's teardown, which took 30-120 ms of the job's end here.
    logging.shutdown()
    os._exit(status)
