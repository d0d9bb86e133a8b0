"""Timestamps: ISO 8601 UTC with a trailing Z as api.md wants them, the log prefix, and
the API database's epoch seconds."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso_z(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def from_epoch(value: float | None) -> datetime | None:
    """The API's database stores instants as epoch seconds (REAL)."""
    return None if value is None else datetime.fromtimestamp(value, UTC)


def log_prefix(moment: datetime) -> str:
    """The `[HH:MM:SS.mmm] ` prefix of every captured log line (UTC)."""
    moment = moment.astimezone(UTC)
    return f"[{moment:%H:%M:%S}.{moment.microsecond // 1000:03d}] "
