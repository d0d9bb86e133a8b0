"""Admission: never start a job that would overcommit the host (api.md "Admission").

`decide` is pure arithmetic over the jobs currently holding resources; the caller holds
the create lock from reading those jobs until its own row is inserted, so concurrent
creations cannot overcommit together.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from flashpods.common.errors import ServiceError


@dataclass(frozen=True)
class Usage:
    cpus: int
    memory_gb: int
    jobs: int


def usage_of(jobs: Iterable[tuple[int, int]]) -> Usage:
    cpus = memory = count = 0
    for job_cpus, job_memory in jobs:
        cpus += job_cpus
        memory += job_memory
        count += 1
    return Usage(cpus, memory, count)


def fits(used: Usage, cpus: int, memory_gb: int, host_cpus: int, host_memory_gb: int) -> bool:
    return used.cpus + cpus <= host_cpus and used.memory_gb + memory_gb <= host_memory_gb


def check(used: Usage, cpus: int, memory_gb: int, host_cpus: int, host_memory_gb: int) -> None:
    """Raise 429 insufficient_resources unless the request fits next to `used`."""
    if fits(used, cpus, memory_gb, host_cpus, host_memory_gb):
        return
    details: dict[str, Any] = {
        "requested": {"cpus": cpus, "memory_gb": memory_gb},
        "available": {
            "cpus": max(0, host_cpus - used.cpus),
            "memory_gb": max(0, host_memory_gb - used.memory_gb),
        },
        "host_capacity": {"cpus": host_cpus, "memory_gb": host_memory_gb},
        "running_jobs": used.jobs,
    }
    raise ServiceError(
        429,
        "insufficient_resources",
        "Not enough free CPUs or memory on the host for this job; retry when a job ends",
        details,
        headers={"Retry-After": "10"},
    )
