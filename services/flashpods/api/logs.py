"""GET /jobs/{id}/output: the last N lines of a job's log, read backwards from the end.

Never reads the whole file: blocks are read from the end until N+1 line breaks are seen,
so tail=100 on a 50 MB log touches a few kilobytes.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flashpods.api.config import Config
from flashpods.api.runtime import LOG_TRUNCATED_MARKER, LOG_UNREADABLE_MARKER
from flashpods.common.errors import ServiceError
from flashpods.common.limits import MAX_TAIL
from flashpods.common.numbers import parse_decimal

BLOCK = 64 * 1024
DEFAULT_TAIL = 100
# However long the lines, one request reads at most this much (the end of a longer line
# is returned as it is).
MAX_TAIL_BYTES = 8 * 1024 * 1024
_before, _, _after = LOG_TRUNCATED_MARKER.partition("{limit}")
TRUNCATED_RE = re.compile(
    rf"(?:{re.escape(_before)}.+{re.escape(_after)}|{re.escape(LOG_UNREADABLE_MARKER)})$"
)


@dataclass(frozen=True)
class Tail:
    lines: list[str]
    total_bytes: int
    truncated: bool


def tail_file(path: Path, count: int) -> Tail:
    """The last `count` lines of `path` (a missing file is an empty log)."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below; fstat needs the fd
    except FileNotFoundError:
        return Tail([], 0, False)
    with handle:
        size = os.fstat(handle.fileno()).st_size  # appends after this are not read
        position = size
        floor = max(0, size - MAX_TAIL_BYTES)
        chunks: list[bytes] = []
        breaks = 0
        # The final byte is usually the last line's '\n'; N lines need N+1 breaks before it.
        while position > floor and breaks <= count:
            step = min(BLOCK, position - floor)
            position -= step
            handle.seek(position)
            chunk = handle.read(step)
            chunks.append(chunk)
            breaks += chunk.count(b"\n")
    data = b"".join(reversed(chunks))
    # With more than `count` pieces the first (possibly cut) one is never among the last
    # `count`; with fewer, the byte cap was hit and the end of a huge line is kept.
    pieces = (data[:-1] if data.endswith(b"\n") else data).split(b"\n") if data else []
    lines = [piece.decode("utf-8", "replace") for piece in pieces[-count:]] if count else []
    truncated = bool(lines) and TRUNCATED_RE.search(lines[-1]) is not None
    return Tail(lines, size, truncated)


def log_path(config: Config, job_id: str) -> Path:
    return config.logs_path / f"{job_id}.log"


def parse_tail(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_TAIL
    count = parse_decimal(raw)
    if count is None or not 1 <= count <= MAX_TAIL:
        raise ServiceError(
            400,
            "invalid_parameter",
            f"tail must be an integer from 1 to {MAX_TAIL}",
            {"parameter": "tail"},
        )
    return count


def logs_gone(row: dict[str, Any]) -> bool:
    return row["status"] == "cleaned" or row["logs_deleted_at"] is not None


def logs_deleted() -> ServiceError:
    return ServiceError(410, "logs_deleted", "The job's log has been deleted (retention)")


def job_output(row: dict[str, Any], log_path: Path, count: int) -> dict[str, Any]:
    if row["status"] == "pending":
        raise ServiceError(404, "logs_not_available", "The job has not started; no log yet")
    if logs_gone(row):
        raise logs_deleted()
    tail = tail_file(log_path, count)
    output = "\n".join(tail.lines) + ("\n" if tail.lines else "")
    return {
        "output": output,
        "lines": len(tail.lines),
        "truncated": tail.truncated,
        "total_bytes": tail.total_bytes,
    }
