"""The job log's size rule, in one place for every writer.

Two kinds of lines go into `/var/log/flashpods/{job_id}.log`: the job's own (log capture)
and the runtime's (`[flashpods] …`: start failures, artifact warnings). Both obey one
rule, so the stored log never exceeds its limit: a line is appended only if it leaves
room for the truncation marker line; otherwise the marker is appended (once) and nothing
after it. A log whose last line is the marker is full.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from flashpods.api.runtime import LOG_TRUNCATED_MARKER, LOG_UNREADABLE_MARKER
from flashpods.common.timefmt import log_prefix, utc_now

log = logging.getLogger(__name__)

PREFIX_BYTES = len("[HH:MM:SS.mmm] ")


def format_size(limit_bytes: int) -> str:
    """`50 MB` for the marker line (binary units, as the limit is configured in bytes)."""
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if limit_bytes >= size and limit_bytes % size == 0:
            return f"{limit_bytes // size} {unit}"
    return f"{limit_bytes} bytes"


def marker_text(limit_bytes: int) -> bytes:
    return LOG_TRUNCATED_MARKER.format(limit=format_size(limit_bytes)).encode()


def unreadable_line(moment: datetime) -> bytes:
    """The last line when podman's raw log cannot be read any more (no size limit hit)."""
    return log_prefix(moment).encode() + LOG_UNREADABLE_MARKER.encode() + b"\n"


def truncation_line(limit_bytes: int, moment: datetime) -> bytes:
    return log_prefix(moment).encode() + marker_text(limit_bytes) + b"\n"


def marker_reserve(limit_bytes: int) -> int:
    """Bytes kept free below the limit for the marker line."""
    return PREFIX_BYTES + len(marker_text(limit_bytes)) + 1


def fits(size: int, entry_bytes: int, limit_bytes: int) -> bool:
    """May a log of `size` bytes take an entry of `entry_bytes` (marker room kept)?"""
    return size + entry_bytes + marker_reserve(limit_bytes) <= limit_bytes


def ends_with_marker(path: Path, limit_bytes: int) -> bool:
    """The log is final: its last line is the size marker or the unreadable one (reads only
    the tail)."""
    tails = (marker_text(limit_bytes) + b"\n", LOG_UNREADABLE_MARKER.encode() + b"\n")
    longest = max(len(tail) for tail in tails)
    try:
        with path.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            fh.seek(max(0, size - longest))
            end = fh.read()
            return any(end.endswith(tail) for tail in tails)
    except FileNotFoundError:
        return False


def append_runtime_lines(path: Path, limit_bytes: int, texts: Iterable[str]) -> int:
    """Append `[HH:MM:SS.mmm] [flashpods] TEXT` lines under the size rule; returns how many
    were stored. Lines that do not fit are logged by the service instead (with the job)."""
    job = path.stem
    if ends_with_marker(path, limit_bytes):
        for text in texts:
            log.info("%s (log full): %s", job, text)
        return 0
    stored = 0
    with path.open("ab") as fh:
        size = os.fstat(fh.fileno()).st_size
        full = False
        for text in texts:
            entry = f"{log_prefix(utc_now())}[flashpods] {text}\n".encode(errors="replace")
            if not full and fits(size, len(entry), limit_bytes):
                fh.write(entry)
                size += len(entry)
                stored += 1
                continue
            if not full:
                fh.write(truncation_line(limit_bytes, utc_now()))
                full = True
            log.info("%s (log full): %s", job, text)
    return stored
