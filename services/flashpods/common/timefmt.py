"""Timestamps as api.md wants them: ISO 8601 UTC with a trailing Z."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso_z(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso_z(text: str | None) -> datetime | None:
    if text is None:
        return None
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def log_prefix(moment: datetime) -> str:
    """The `[HH:MM:SS.mmm] ` prefix of every captured log line (UTC)."""
    moment = moment.astimezone(UTC)
    return f"[{moment:%H:%M:%S}.{moment.microsecond // 1000:03d}] "
