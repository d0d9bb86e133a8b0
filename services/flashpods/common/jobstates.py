"""A job's state names and their groups (api.md "Job states"): plain data shared by the
API's state machine (flashpods.api.jobstate: transitions, the only writer of a status)
and the client, which must not import the host's side."""

from __future__ import annotations

from typing import Literal, get_args

JobState = Literal[
    "pending",
    "starting",
    "running",
    "completed",
    "failed",
    "timed_out",
    "cancelled",
    "cleaning",
    "cleaned",
]
# GET /jobs?status= (and the MCP list_jobs tool) accept every state name plus `all`.
StatusFilter = Literal["all", JobState]

STATES: tuple[JobState, ...] = get_args(JobState)
STATUS_FILTERS: tuple[str, ...] = get_args(StatusFilter)

ACTIVE: tuple[JobState, ...] = ("pending", "starting", "running")
ENDED: tuple[JobState, ...] = ("completed", "failed", "timed_out", "cancelled")
CLEANUP: tuple[JobState, ...] = ("cleaning", "cleaned")
# The job's run is over for good: it has ended or its files are being (or were) removed.
OVER: tuple[JobState, ...] = (*ENDED, *CLEANUP)
WITH_CONTAINER: tuple[JobState, ...] = (
    "starting",
    "running",
)  # active states in which a container may exist
