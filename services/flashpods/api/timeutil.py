"""The database stores instants as epoch seconds (REAL); the API shows them with iso_z."""

from __future__ import annotations

from datetime import UTC, datetime


def from_epoch(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)
