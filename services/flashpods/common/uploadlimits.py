"""An upload's two limits, bytes and entries, defined once for the three places that
apply them: finalize (flashpods.api.uploads), the host's watcher while rsync writes
(flashpods.rsyncwatch) and the client that reads why its rsync was cut
(flashpods.client.upload).

An upload's entries are everything under its directory, the directory itself not
counted: files, directories, symlinks, anything else; symlinks are never followed. Its
bytes are the sizes of its non-directory entries (lstat). Exactly at a limit is
allowed; one past it is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

# Left in an upload by the host's watcher when it cut the transfer; the client fetches
# it over rsync after its rsync failed. JSON: {"limit_bytes", "measured_bytes"} or
# {"limit_entries", "measured_entries"}.
MARKER = ".flashpods-upload-too-large"
# The error code for an upload over its entry limit: finalize's 507 and the client's
# reading of a cut (the byte limit's are 507 `insufficient_storage` and the client's
# `upload_too_large`).
TOO_MANY_ENTRIES = "upload_too_many_entries"

Unit = Literal["bytes", "entries"]


def over(measured: int, limit: int) -> bool:
    """Pure: whether an upload measuring `measured` (bytes or entries) is over `limit`."""
    return measured > limit


@dataclass(frozen=True)
class Cut:
    """Why the host cut a transfer: which limit, and what it counted then."""

    unit: Unit
    limit: int
    measured: int

    def marker(self) -> dict[str, int]:
        return {f"limit_{self.unit}": self.limit, f"measured_{self.unit}": self.measured}


def parse_cut(body: Any) -> Cut | None:
    """Pure: the Cut a marker's JSON says, None if it says none we know."""
    if not isinstance(body, dict):
        return None
    units: tuple[Unit, ...] = ("entries", "bytes")
    for unit in units:
        limit, measured = body.get(f"limit_{unit}"), body.get(f"measured_{unit}")
        if isinstance(limit, int) and isinstance(measured, int):
            return Cut(unit, limit, measured)
    return None
