"""Identifiers: job IDs we mint, upload IDs clients choose, idempotency keys.

Upload IDs name directories, so the pattern admits nothing that could leave the uploads
directory (no `/`, no `.`).
"""

from __future__ import annotations

import re
import secrets
import uuid

UPLOAD_ID_RE = re.compile(r"upload_[A-Za-z0-9_-]{1,64}")
JOB_ID_RE = re.compile(r"job_[0-9a-f]{16}")


def new_job_id() -> str:
    return f"job_{secrets.token_hex(8)}"


def is_upload_id(text: str) -> bool:
    return UPLOAD_ID_RE.fullmatch(text) is not None


def is_job_id(text: str) -> bool:
    return JOB_ID_RE.fullmatch(text) is not None


def normalize_client_job_id(text: object) -> str | None:
    """A UUID v4 in canonical form (lower case), or None if `text` is not one."""
    if not isinstance(text, str) or len(text) != 36:
        return None
    try:
        parsed = uuid.UUID(text)
    except ValueError:
        return None
    if parsed.version != 4 or str(parsed) != text.lower():
        return None
    return str(parsed)


def is_request_id(text: str) -> bool:
    """An incoming X-Request-Id is echoed only if it is a UUID (any version)."""
    if len(text) != 36:
        return False
    try:
        return str(uuid.UUID(text)) == text.lower()
    except ValueError:
        return False
