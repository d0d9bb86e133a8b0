"""The request limits of api.md: what the API validates and the clients advertise (the
MCP server's tool schemas), defined once."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TypeLimits:
    default_cpus: int
    max_cpus: int
    default_memory_gb: int
    max_memory_gb: int
    default_timeout: int
    max_timeout: int
    # Size of the job's writable scratch (/tmp, and /work without an upload): RAM-backed
    # tmpfs, so it is part of memory_gb (docs/runtime.md "Disk").
    default_disk_gb: int
    max_disk_gb: int


# system.md: requests above a type's maximum are clamped to it by the API, not rejected.
LIMITS: dict[str, TypeLimits] = {
    "worker": TypeLimits(2, 8, 4, 16, 30, 120, 2, 16),
    "agent": TypeLimits(2, 4, 4, 8, 60, 120, 2, 8),
}
MAX_COMMAND = 10_000
MAX_TASK = 100_000
MAX_CONTEXT = 100_000
MAX_IMAGE = 255
MAX_BRANCH = 255
MAX_TAIL = 10_000  # lines of GET /jobs/{id}/output?tail=
# GET /jobs/{id}/output?follow=true&timeout=: seconds one follow response lasts at most.
DEFAULT_FOLLOW_SECONDS = 30  # below the clients' read timeout (60 s)
MAX_FOLLOW_SECONDS = 300
DEFAULT_LIST_LIMIT = 20  # jobs per GET /jobs without ?limit=
MAX_LIST_LIMIT = 100
