"""Artifacts: listings come from rows; downloads open the file strictly inside the job's
directory (component by component, O_NOFOLLOW, so neither `..` nor a symlink planted by
the job can lead anywhere else) and support a single `Range`.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flashpods.api.config import Config
from flashpods.api.db import Store
from flashpods.common.artifact_names import artifact_name_problem
from flashpods.common.errors import ServiceError
from flashpods.common.jobstates import ACTIVE
from flashpods.common.numbers import MAX_DIGITS, parse_decimal
from flashpods.common.timefmt import from_epoch, iso_z

# ASCII digits only (`\d` would take `²`); the numbers themselves go through parse_decimal.
_RANGE_RE = re.compile(r"bytes=([0-9]*)-([0-9]*)", re.ASCII)


@dataclass(frozen=True)
class Download:
    fd: int  # the caller closes it
    size: int  # of the whole file
    start: int
    end: int  # inclusive
    partial: bool
    filename: str

    @property
    def length(self) -> int:
        return self.end - self.start + 1 if self.size else 0


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end inclusive) for a single `bytes=` range; None means the whole file.

    Multiple ranges or other units are ignored (the whole file is a valid answer);
    an unsatisfiable range raises 416; a number too long to be a file offset, 400.
    """
    if not header:
        return None
    match = _RANGE_RE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if first == "" and last == "":
        return None
    if first == "":
        suffix = _offset(last)
        if suffix == 0 or size == 0:
            raise range_not_satisfiable(size)
        return max(0, size - suffix), size - 1
    start = _offset(first)
    end = None if last == "" else _offset(last)
    if start >= size or (end is not None and end < start):
        raise range_not_satisfiable(size)
    return start, size - 1 if end is None else min(end, size - 1)


def _offset(raw: str) -> int:
    value = parse_decimal(raw)
    if value is None:
        raise ServiceError(
            400,
            "invalid_parameter",
            f"Range offsets are decimal numbers of at most {MAX_DIGITS} digits",
            {"parameter": "Range"},
        )
    return value


def range_not_satisfiable(size: int) -> ServiceError:
    return ServiceError(
        416,
        "range_not_satisfiable",
        "The requested range is outside the file",
        {"size_bytes": size},
        headers={"Content-Range": f"bytes */{size}"},
    )


class Artifacts:
    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store

    def job_dir(self, job_id: str) -> Path:
        return self.config.artifacts_path / job_id

    def _available(self, row: dict[str, Any]) -> None:
        if row["artifacts_deleted_at"] is not None or row["status"] == "cleaned":
            raise ServiceError(
                410, "artifacts_deleted", "The job's artifacts have been deleted (retention)"
            )
        if row["status"] in ACTIVE and not row["copy_in_progress"]:
            raise ServiceError(
                404, "artifacts_not_available", "The job has not ended; no artifacts yet"
            )

    def listing(self, row: dict[str, Any]) -> dict[str, Any]:
        self._available(row)
        if row["copy_in_progress"]:
            return {
                "artifacts": [],
                "total_size_bytes": 0,
                "expires_at": None,
                "copy_in_progress": True,
            }
        rows = self.store.query(
            "SELECT name, size_bytes, created_at FROM artifacts WHERE job_id = ? ORDER BY name",
            (row["id"],),
        )
        expires = row["completed_at"] + self.config.artifacts_ttl if row["completed_at"] else None
        return {
            "artifacts": [
                {
                    "name": item["name"],
                    "size_bytes": item["size_bytes"],
                    "created_at": iso_z(from_epoch(item["created_at"])),
                }
                for item in rows
            ],
            "total_size_bytes": sum(item["size_bytes"] for item in rows),
            "expires_at": iso_z(from_epoch(expires)),
            "copy_in_progress": False,
        }

    def open(self, row: dict[str, Any], name: str, range_header: str | None) -> Download:
        self._available(row)
        if row["copy_in_progress"]:
            raise ServiceError(
                503,
                "copy_in_progress",
                "Artifacts are still being copied; retry shortly",
                headers={"Retry-After": "2"},
            )
        known = self.store.one(
            "SELECT 1 AS ok FROM artifacts WHERE job_id = ? AND name = ?", (row["id"], name)
        )
        if known is None:
            raise artifact_not_found(name)
        fd = open_inside(self.job_dir(row["id"]), name)
        try:
            size = os.fstat(fd).st_size
            span = parse_range(range_header, size)
        except BaseException:
            os.close(fd)
            raise
        start, end = span if span is not None else (0, max(0, size - 1))
        return Download(fd, size, start, end, span is not None, name.rsplit("/", 1)[-1])


def check_name(name: str) -> None:
    problem = artifact_name_problem(name)
    if problem is not None:
        raise ServiceError(400, "invalid_artifact_name", f"Invalid artifact name: {problem}")


def artifact_not_found(name: str) -> ServiceError:
    return ServiceError(404, "artifact_not_found", "No such artifact", {"name": name[:300]})


def open_inside(base: Path, name: str) -> int:
    """An fd for the regular file `name` under `base`, never leaving `base`."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        directory = os.open(base, flags | os.O_DIRECTORY)
    except OSError:
        raise artifact_not_found(name) from None
    try:
        parts = name.split("/")
        for part in parts[:-1]:
            child = os.open(part, flags | os.O_DIRECTORY, dir_fd=directory)
            os.close(directory)
            directory = child
        fd = os.open(parts[-1], flags | os.O_NONBLOCK, dir_fd=directory)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.EACCES, errno.ENXIO):
            raise artifact_not_found(name) from None
        raise
    finally:
        os.close(directory)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise artifact_not_found(name)
    return fd
