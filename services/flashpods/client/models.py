"""Typed views of the API's JSON objects (api.md). Each keeps the raw object too, so
the CLI's --json and the MCP tools pass on exactly what the API said."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flashpods.client.errors import FlashpodsError
from flashpods.client.upload import TransferStats
from flashpods.common.jobstates import OVER


def _get(raw: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = raw.get(key)
    if not isinstance(value, kind):
        raise FlashpodsError("invalid_response", f"API answer lacks a valid {key!r}: {raw!r}"[:500])
    return value


@dataclass(frozen=True)
class Health:
    status: str
    version: str | None
    uptime_seconds: float | None
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Health:
        return cls(_get(raw, "status", str), raw.get("version"), raw.get("uptime_seconds"), raw)


@dataclass(frozen=True)
class Upload:
    upload_id: str
    state: str
    size_bytes: int | None
    file_count: int | None
    expires_at: str | None
    raw: dict[str, Any] = field(repr=False)
    base_upload_id: str | None = None  # the upload it started from (delta re-upload)
    base_unavailable: str | None = None  # POST /uploads: why the base named was not used
    transfer: TransferStats | None = None  # rsync's numbers, when this client uploaded it

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Upload:
        return cls(
            _get(raw, "upload_id", str),
            _get(raw, "state", str),
            raw.get("size_bytes"),
            raw.get("file_count"),
            raw.get("expires_at"),
            raw,
            raw.get("base_upload_id"),
            raw.get("base_unavailable"),
        )


@dataclass(frozen=True)
class CreatedJob:
    job_id: str
    status: str
    created: bool  # False: an idempotent replay returned the job the key already made
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> CreatedJob:
        created = bool(raw.get("created"))
        return cls(_get(raw, "job_id", str), _get(raw, "status", str), created, raw)


@dataclass(frozen=True)
class Job:
    id: str
    type: str
    status: str
    exit_code: int | None
    error: str | None
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Job:
        return cls(
            _get(raw, "id", str),
            _get(raw, "type", str),
            _get(raw, "status", str),
            raw.get("exit_code"),
            raw.get("error"),
            raw,
        )

    @property
    def ended(self) -> bool:
        return self.status in OVER


@dataclass(frozen=True)
class JobList:
    jobs: list[Job]
    total: int
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> JobList:
        jobs = [Job.from_dict(j) for j in _get(raw, "jobs", list)]
        return cls(jobs, int(raw.get("total", len(jobs))), raw)


@dataclass(frozen=True)
class JobOutput:
    output: str
    lines: int
    truncated: bool
    total_bytes: int
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> JobOutput:
        return cls(
            _get(raw, "output", str),
            int(raw.get("lines", 0)),
            bool(raw.get("truncated")),
            int(raw.get("total_bytes", 0)),
            raw,
        )


@dataclass(frozen=True)
class OutputPiece:
    """A stretch of a job's log (Flashpods.read_output)."""

    output: str
    offset: int  # byte offset of its start in the log
    next_offset: int  # where the next piece starts
    complete: bool  # the job has ended and this piece runs to the end of its log

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "offset": self.offset,
            "next_offset": self.next_offset,
            "complete": self.complete,
        }


@dataclass(frozen=True)
class Artifact:
    name: str
    size_bytes: int
    created_at: str | None


@dataclass(frozen=True)
class ArtifactList:
    artifacts: list[Artifact]
    total_size_bytes: int
    expires_at: str | None
    copy_in_progress: bool
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ArtifactList:
        items = [
            Artifact(_get(a, "name", str), int(a.get("size_bytes", 0)), a.get("created_at"))
            for a in _get(raw, "artifacts", list)
        ]
        return cls(
            items,
            int(raw.get("total_size_bytes", 0)),
            raw.get("expires_at"),
            bool(raw.get("copy_in_progress")),
            raw,
        )


@dataclass(frozen=True)
class Cancelled:
    job_id: str
    status: str
    message: str | None
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Cancelled:
        return cls(_get(raw, "job_id", str), _get(raw, "status", str), raw.get("message"), raw)
