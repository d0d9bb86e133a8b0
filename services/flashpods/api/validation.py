"""Pure validation of request bodies and names (no I/O), in api.md's order of checks."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from flashpods.api.ids import is_upload_id, normalize_client_job_id
from flashpods.common.errors import ServiceError
from flashpods.common.limits import (
    LIMITS,
    MAX_BRANCH,
    MAX_COMMAND,
    MAX_CONTEXT,
    MAX_IMAGE,
    MAX_TASK,
)

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_DOMAIN = rf"(?:{_LABEL}(?:\.{_LABEL})*(?::[0-9]+)?)"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
IMAGE_RE = re.compile(rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*(?::{_TAG})?(?:@{_DIGEST})?")
# git check-ref-format, the parts that matter for a branch name given on a command line.
_BRANCH_BAD = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//|\.lock$|^[-/.]|[/.]$")


@dataclass(frozen=True)
class JobRequest:
    type: str
    image: str
    cpus: int
    memory_gb: int
    timeout_minutes: int
    disk_gb: int
    client_job_id: str | None = None
    command: str | None = None
    task: str | None = None
    context: str | None = None
    git_branch: str | None = None
    files_id: str | None = None


def _bad(code: str, message: str, **details: Any) -> ServiceError:
    return ServiceError(400, code, message, details)


def _text(body: dict[str, Any], key: str, max_len: int) -> str | None:
    value = body.get(key)
    if not isinstance(value, str) or not value or len(value) > max_len:
        return None
    return value


def is_valid_image(image: object) -> bool:
    return (
        isinstance(image, str) and len(image) <= MAX_IMAGE and IMAGE_RE.fullmatch(image) is not None
    )


def is_valid_branch(branch: str) -> bool:
    return 0 < len(branch) <= MAX_BRANCH and _BRANCH_BAD.search(branch) is None


def _resource(body: dict[str, Any], key: str, code: str, default: int, maximum: int) -> int:
    if key not in body or body[key] is None:
        return default
    value = body[key]
    # JSON 2.0 is accepted as 2; bools are ints in Python but not numbers in JSON.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _bad(code, f"{key} must be an integer of at least 1", field=key, maximum=maximum)
    return min(value, maximum)


def parse_job_request(body: dict[str, Any], default_image: str) -> JobRequest:
    """Validate a POST /jobs body; raise the first error in api.md's order."""
    job_type = body.get("type")
    if not isinstance(job_type, str) or job_type not in LIMITS:
        raise _bad("invalid_job_type", "type must be 'worker' or 'agent'")
    command = task = context = branch = None
    if job_type == "worker":
        command = _text(body, "command", MAX_COMMAND)
        if command is None:
            raise _bad(
                "missing_command", f"worker jobs need a command of 1-{MAX_COMMAND} characters"
            )
    else:
        task = _text(body, "task", MAX_TASK)
        if task is None:
            raise _bad("missing_task", f"agent jobs need a task of 1-{MAX_TASK} characters")
        if body.get("context") is not None:
            context = body["context"]
            if not isinstance(context, str) or len(context) > MAX_CONTEXT:
                raise _bad(
                    "invalid_context",
                    f"context must be a string of at most {MAX_CONTEXT} characters",
                )
        branch = body.get("git_branch")
        if not isinstance(branch, str) or not is_valid_branch(branch):
            raise _bad("missing_git_branch", "agent jobs need a valid git_branch")
    client_job_id = None
    if body.get("client_job_id") is not None:
        client_job_id = normalize_client_job_id(body["client_job_id"])
        if client_job_id is None:
            raise _bad("invalid_client_job_id", "client_job_id must be a UUID v4")
    image = body.get("image")
    if image is None:
        image = default_image
    elif not is_valid_image(image):
        raise _bad(
            "invalid_image", "image must be [registry/]name[:tag][@digest], at most 255 characters"
        )
    limits = LIMITS[job_type]
    cpus = _resource(body, "cpus", "invalid_cpus", limits.default_cpus, limits.max_cpus)
    memory = _resource(
        body, "memory_gb", "invalid_memory", limits.default_memory_gb, limits.max_memory_gb
    )
    timeout = _resource(
        body, "timeout_minutes", "invalid_timeout", limits.default_timeout, limits.max_timeout
    )
    disk = _resource(body, "disk_gb", "invalid_disk", limits.default_disk_gb, limits.max_disk_gb)
    files_id = body.get("files_id")
    if files_id is not None and not isinstance(files_id, str):
        files_id = str(files_id)
    return JobRequest(
        type=job_type,
        image=image,
        cpus=cpus,
        memory_gb=memory,
        timeout_minutes=timeout,
        disk_gb=disk,
        client_job_id=client_job_id,
        command=command,
        task=task,
        context=context,
        git_branch=branch,
        files_id=files_id or None,
    )


def _upload_id_field(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not is_upload_id(value):
        raise _bad(
            "invalid_upload_id", f"{key} must match ^upload_[A-Za-z0-9_-]{{1,64}}$", field=key
        )
    return value


def parse_upload_create(body: dict[str, Any]) -> tuple[str, str | None]:
    """Validate a POST /uploads body: (upload_id, base_upload_id or None)."""
    upload_id = _upload_id_field(body, "upload_id")
    if body.get("base_upload_id") is None:
        return upload_id, None
    return upload_id, _upload_id_field(body, "base_upload_id")
