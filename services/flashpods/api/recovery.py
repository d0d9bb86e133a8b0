"""Reconciliation of the database with podman (api.md "Crash recovery").

`decide` is the recovery table as a pure function; `Reconciler` lists this instance's
containers and the jobs that should have one, and applies the decisions. The first
successful pass (start-up) resumes supervision of every surviving container; later
passes repair what nobody finishes: orphans, lost containers, stuck cancels, active
jobs whose container has exited (resumed, which collects them; a no-op for a job the
runtime still supervises), and jobs past the end bound. A container that vanished is
declared lost only when two passes in a row miss it, so a container the runtime is
removing at the end of a job is never mistaken for a lost one.

The end bound (docs/runtime.md): every job has a final status by
started_at + timeout + END_GRACE_SECONDS + one reconcile interval. END_GRACE_SECONDS
covers the stop (10 s grace), the log's last read (30 s) and the artifact walk (60 s);
a job still holding its resources after it is ended here `failed`, `end_bound_exceeded`,
and its container is removed.
"""

from __future__ import annotations

import logging
import time
from enum import Enum
from typing import Any

from flashpods.api.db import Store
from flashpods.api.jobs import Jobs
from flashpods.api.jobstate import HOLDING_SQL, holds_resources
from flashpods.api.runtime import ContainerInfo, Runtime
from flashpods.common.jobstates import ACTIVE
from flashpods.common.timefmt import utc_now

log = logging.getLogger("flashpods.api.recovery")

RUNNING_STATES = frozenset({"running", "paused"})
RECENT = 30.0  # seconds: rows changed this recently are being handled by someone else
END_GRACE_SECONDS = 120.0


class Action(Enum):
    NOTHING = "nothing"
    RESUME = "resume"  # supervise again: running -> resume capture/timeout, exited -> collect
    RESUME_AND_CANCEL = "resume_and_cancel"  # a cancel was in flight when the API stopped
    FAIL_NOT_FOUND = "container_not_found_on_recovery"
    FAIL_LOST = "container_lost_on_recovery"
    REMOVE = "remove"  # orphan, or leftover of an ended job
    CANCEL_DONE = "cancel_done"  # cancelled job whose container is gone: release its resources
    FAIL_OVERDUE = "end_bound_exceeded"  # past the end bound: remove the container, fail


def decide(
    status: str | None, cancel_pending: bool, container_state: str | None, startup: bool
) -> Action:
    """What to do for one job/container pair. status None = no job row; container_state
    None = no container."""
    if container_state is not None:
        if status is None:
            return Action.REMOVE
        # Periodically only a container that has ended: resuming it collects it unless
        # the runtime still supervises it (then resume is a no-op).
        resume = startup or container_state not in RUNNING_STATES
        if status in ACTIVE:
            return Action.RESUME if resume else Action.NOTHING
        if status == "cancelled" and cancel_pending:
            return Action.RESUME_AND_CANCEL if resume else Action.NOTHING
        return Action.REMOVE  # the job ended; its container is a leftover
    if status in ("pending", "starting"):
        return Action.FAIL_NOT_FOUND
    if status == "running":
        return Action.FAIL_LOST
    if status == "cancelled" and cancel_pending:
        return Action.CANCEL_DONE
    return Action.NOTHING


class Reconciler:
    def __init__(self, store: Store, jobs: Jobs, runtime: Runtime) -> None:
        self.store = store
        self.jobs = jobs
        self.runtime = runtime
        self.startup_done = False
        self.boot = time.time()
        self.suspects: dict[str, str] = {}  # job id -> status when its container was missed

    def run_once(self) -> None:
        startup = not self.startup_done
        containers = self.runtime.list_job_containers()  # podman errors: the loop retries
        listed_at = time.time()
        by_job = {info.job_id: info for info in containers}
        rows = {
            row["id"]: row for row in self.store.query(f"SELECT * FROM jobs WHERE {HOLDING_SQL}")
        }
        for job_id in by_job.keys() - rows.keys():
            row = self.jobs.row(job_id)
            if row is not None:
                rows[job_id] = row
        missed: dict[str, str] = {}
        for job_id in by_job.keys() | rows.keys():
            info = by_job.get(job_id)
            row = rows.get(job_id)
            # Rows this process changed recently (or at all, before the start-up pass
            # succeeded) are handled by whoever changed them: look again next pass.
            if row is not None and row["updated_at"] > (
                self.boot if startup else listed_at - RECENT
            ):
                continue
            if row is not None and job_id in self.jobs.starting:
                continue  # runtime.start is still creating it
            action = decide(
                row["status"] if row else None,
                bool(row and row["cancel_requested"]),
                info.state if info else None,
                startup,
            )
            if row is not None and self.overdue(row, listed_at):
                action = Action.FAIL_OVERDUE
            if (
                action in (Action.FAIL_NOT_FOUND, Action.FAIL_LOST, Action.CANCEL_DONE)
                and not startup
            ):
                assert row is not None
                if self.suspects.get(job_id) != row["status"]:
                    missed[job_id] = row["status"]
                    continue
            try:
                self.apply(action, row, info)
            except Exception:
                log.exception("recovery of %s (%s) failed; retrying later", job_id, action.value)
        self.suspects = missed
        self.startup_done = True

    def apply(self, action: Action, row: dict[str, Any] | None, info: ContainerInfo | None) -> None:
        if action is Action.NOTHING:
            return
        if action is Action.REMOVE:
            assert info is not None
            log.warning(
                "removing container %s of %s job %s",
                info.container_id[:12],
                row["status"] if row else "unknown",
                info.job_id,
            )
            self.runtime.remove_container(info.container_id)
            return
        assert row is not None
        job_id = row["id"]
        if action in (Action.RESUME, Action.RESUME_AND_CANCEL):
            assert info is not None
            log.info("resuming job %s (container %s)", job_id, info.state)
            self.runtime.resume(self.jobs.spec_for(row), self.jobs, info)
            if info.state in RUNNING_STATES:
                self.jobs.on_running(job_id, info.started_at or utc_now())
            if action is Action.RESUME_AND_CANCEL:
                self.jobs.cancel_container(job_id)
            return
        if action is Action.CANCEL_DONE:
            self.jobs.cancel_done(job_id)
            return
        log.warning("job %s: %s", job_id, action.value)
        if action is Action.FAIL_OVERDUE and info is not None:
            self.runtime.remove_container(info.container_id)
        self.jobs.fail_on_recovery(job_id, row["status"], action.value)

    def overdue(self, row: dict[str, Any], now: float) -> bool:
        """Still holding resources past the end bound (counted from this process's start
        at the earliest: a job resumed after downtime gets the whole grace)."""
        if not holds_resources(row):
            return False
        begun = row["started_at"] if row["started_at"] is not None else row["created_at"]
        deadline = max(begun + row["timeout_minutes"] * 60.0, self.boot)
        return now > deadline + END_GRACE_SECONDS
