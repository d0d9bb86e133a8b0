"""Jobs: creation (validation -> idempotency -> upload -> admission -> start), reads,
cancellation, the state machine, and the JobHooks that persist what the runtime reports.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from datetime import datetime
from typing import Any

from flashpods.api import admission, jobstate
from flashpods.api.config import Config
from flashpods.api.db import Store
from flashpods.api.ids import is_upload_id, new_job_id
from flashpods.api.jobstate import HOLDING_SQL
from flashpods.api.logbus import LogBus
from flashpods.api.logs import log_path
from flashpods.api.runtime import ContainerError, JobOutcome, JobSpec, Runtime
from flashpods.api.uploads import Uploads
from flashpods.api.uploads import not_found as upload_not_found
from flashpods.api.validation import JobRequest, parse_job_request
from flashpods.common.errors import ServiceError
from flashpods.common.jobstates import ENDED, WITH_CONTAINER
from flashpods.common.limits import LIMITS
from flashpods.common.timefmt import from_epoch, iso_z

log = logging.getLogger("flashpods.api.jobs")


def job_not_found(job_id: str) -> ServiceError:
    return ServiceError(
        404, "job_not_found", f"Job {job_id[:80]} not found", {"job_id": job_id[:80]}
    )


def render_job(row: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    job: dict[str, Any] = {"id": row["id"], "type": row["type"], "status": row["status"]}
    if row["type"] == "worker":
        job["command"] = row["command"]
    else:
        job.update(task=row["task"], context=row["context"], git_branch=row["git_branch"])
    job.update(
        files_id=row["files_id"],
        image=row["image"],
        cpus=row["cpus"],
        memory_gb=row["memory_gb"],
        disk_gb=row["disk_gb"],
        timeout_minutes=row["timeout_minutes"],
        exit_code=row["exit_code"],
        error=row["error"],
        created_at=iso_z(from_epoch(row["created_at"])),
        started_at=iso_z(from_epoch(row["started_at"])),
        completed_at=iso_z(from_epoch(row["completed_at"])),
    )
    started, completed = row["started_at"], row["completed_at"]
    if row["status"] == "running" and started is not None:
        job["elapsed_seconds"] = round(max(0.0, now - started), 3)
    if row["final_status"] is not None or row["status"] in ENDED:
        job["final_status"] = row["final_status"] or row["status"]
        if completed is not None:
            job["duration_seconds"] = round(max(0.0, completed - (started or row["created_at"])), 3)
        if job["final_status"] == "timed_out" and started is not None and completed is not None:
            job["actual_runtime_seconds"] = round(max(0.0, completed - started), 3)
    return job


class Jobs:
    """Job lifecycle; also the runtime's JobHooks (thread-safe: every write is one
    statement or one transaction on the shared Store)."""

    def __init__(
        self, config: Config, store: Store, uploads: Uploads, runtime: Runtime, logbus: LogBus
    ) -> None:
        self.config = config
        self.store = store
        self.uploads = uploads
        self.runtime = runtime
        self.logbus = logbus  # told of every status change and every new log byte
        # Spans idempotency lookup, admission and insert, so concurrent creations neither
        # duplicate a client_job_id nor overcommit the host.
        self.create_lock = threading.Lock()
        # Jobs between their insert and the return of runtime.start: recovery leaves them be.
        self.starting: set[str] = set()

    # --- reads -------------------------------------------------------------------------

    def row(self, job_id: str) -> dict[str, Any] | None:
        return self.store.one("SELECT * FROM jobs WHERE id = ?", (job_id,))

    def require(self, job_id: str) -> dict[str, Any]:
        row = self.row(job_id)
        if row is None:
            raise job_not_found(job_id)
        return row

    def get(self, job_id: str) -> dict[str, Any]:
        return render_job(self.require(job_id))

    def list(self, status: str, limit: int) -> dict[str, Any]:
        params: tuple[str, ...] = ()
        if status == "all":
            where = ""
        else:
            where, params = "WHERE status = ?", (status,)
        total = self.store.one(f"SELECT count(*) AS n FROM jobs {where}", params)
        rows = self.store.query(
            f"SELECT * FROM jobs {where} ORDER BY created_at DESC, rowid DESC LIMIT ?",
            (*params, limit),
        )
        now = time.time()
        return {"jobs": [render_job(row, now) for row in rows], "total": total["n"] if total else 0}

    def spec_for(self, row: dict[str, Any]) -> JobSpec:
        return JobSpec(
            job_id=row["id"],
            job_type=row["type"],
            image=row["image"],
            cpus=row["cpus"],
            memory_gb=row["memory_gb"],
            # A job from before disk_gb existed resumes with the default of its type.
            disk_gb=row["disk_gb"] or LIMITS[row["type"]].default_disk_gb,
            timeout_minutes=row["timeout_minutes"],
            artifacts_dir=self.config.artifacts_path / row["id"],
            log_path=log_path(self.config, row["id"]),
            upload_dir=self.uploads.snapshot_dir(row["files_id"]) if row["files_id"] else None,
            command=row["command"],
            task=row["task"],
            context=row["context"],
            git_branch=row["git_branch"],
        )

    # --- create --------------------------------------------------------------------------

    def create(self, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Returns (response body, created)."""
        request = parse_job_request(body, self.config.default_image)
        with self.create_lock:
            existing = self._existing_for_key(request.client_job_id)
            if existing is not None:
                return self._replay(existing), False
            self._check_upload(request.files_id)
            used = admission.usage_of(
                (row["cpus"], row["memory_gb"])
                for row in self.store.query(f"SELECT cpus, memory_gb FROM jobs WHERE {HOLDING_SQL}")
            )
            admission.check(
                used,
                request.cpus,
                request.memory_gb,
                self.config.host_cpus,
                self.config.host_memory_gb,
            )
            try:
                job_id = self._insert(request)
                self.starting.add(job_id)
            except sqlite3.IntegrityError:
                # Another API process won the race for this client_job_id.
                existing = self._existing_for_key(request.client_job_id)
                if existing is None:
                    raise
                return self._replay(existing), False
        try:
            status = self._start(job_id)
        finally:
            self.starting.discard(job_id)
        return {"job_id": job_id, "status": status, "created": True}, True

    def _existing_for_key(self, key: str | None) -> str | None:
        if key is None:
            return None
        row = self.store.one(
            "SELECT job_id FROM idempotency_keys WHERE key = ? AND active = 1", (key,)
        )
        return row["job_id"] if row else None

    def _replay(self, job_id: str) -> dict[str, Any]:
        row = self.require(job_id)
        return {
            "job_id": job_id,
            "status": row["status"],
            "created": False,
            "message": "Existing job returned (idempotent)",
        }

    def _check_upload(self, files_id: str | None) -> None:
        if files_id is None:
            return
        if not is_upload_id(files_id):
            raise upload_not_found(files_id[:80])
        row = self.uploads.row(files_id)
        if row is None:
            if self.uploads.incoming_dir(files_id).is_dir():
                raise ServiceError(
                    409, "upload_not_finalized", f"Upload {files_id} is not finalized"
                )
            raise upload_not_found(files_id)
        if row["state"] == "consumed" or row["job_id"] is not None:
            raise ServiceError(
                409,
                "upload_already_consumed",
                f"Upload {files_id} is already used by a job",
                {"job_id": row["job_id"]},
            )
        if row["state"] != "finalized":
            raise ServiceError(
                409,
                "upload_not_finalized",
                f"Upload {files_id} is {row['state']}, not finalized",
                {"state": row["state"]},
            )
        if not self.uploads.snapshot_unchanged(row):
            raise ServiceError(
                409,
                "upload_modified",
                f"Upload {files_id} changed after it was finalized; upload it again",
            )

    def _insert(self, request: JobRequest) -> str:
        job_id = new_job_id()
        now = time.time()
        with self.store.transaction() as conn:
            jobstate.insert(
                self.store,
                id=job_id,
                type=request.type,
                command=request.command,
                task=request.task,
                context=request.context,
                git_branch=request.git_branch,
                files_id=request.files_id,
                image=request.image,
                cpus=request.cpus,
                memory_gb=request.memory_gb,
                disk_gb=request.disk_gb,
                timeout_minutes=request.timeout_minutes,
                client_job_id=request.client_job_id,
                created_at=now,
                updated_at=now,
            )
            if request.client_job_id is not None:
                conn.execute(
                    "INSERT INTO idempotency_keys (key, job_id, active, created_at) "
                    "VALUES (?, ?, 1, ?)",
                    (request.client_job_id, job_id, now),
                )
            if request.files_id is not None:
                reserved = conn.execute(
                    "UPDATE uploads SET job_id = ?, updated_at = ? "
                    "WHERE upload_id = ? AND state = 'finalized' AND job_id IS NULL",
                    (job_id, now, request.files_id),
                ).rowcount
                if reserved != 1:
                    raise ServiceError(
                        409, "upload_already_consumed", "Upload is already used by a job"
                    )
        log.info(
            "job %s created (%s, %d cpus, %d GB)",
            job_id,
            request.type,
            request.cpus,
            request.memory_gb,
        )
        return job_id

    def _start(self, job_id: str) -> str:
        if not self.transition(job_id, "starting"):
            return self.require(job_id)["status"]  # cancelled while pending
        row = self.require(job_id)
        spec = self.spec_for(row)
        spec.artifacts_dir.mkdir(mode=0o700, exist_ok=True)
        try:
            self.runtime.start(spec, self)
        except Exception as exc:
            if isinstance(exc, ContainerError):
                message, cause = str(exc), exc.cause
            else:
                log.exception("job %s: runtime.start failed", job_id)
                message = cause = "the runtime failed unexpectedly"
            self._fail_start(job_id, f"container_error: {message}")
            raise ServiceError(
                500,
                "container_error",
                f"The job's container could not start: {message}",
                {"job_id": job_id},
                cause=f"job {job_id}: container could not start: {cause}",
            ) from None
        row = self.require(job_id)
        if row["cancel_requested"]:
            self.cancel_container(job_id)  # DELETE arrived while we were starting
        return row["status"]

    def transition(
        self, job_id: str, target: str, only_from: tuple[str, ...] | None = None, **fields: Any
    ) -> bool:
        """Move to `target` if the current state allows it; False if it does not."""
        moved = jobstate.transition(self.store, job_id, target, only_from, **fields)
        if moved:
            self.logbus.notify(job_id, status=True)  # log followers re-check the job
        return moved

    def _fail_start(self, job_id: str, error: str) -> None:
        """No container exists. A DELETE may have made the job `cancelled` meanwhile: it
        stays cancelled, and nothing is left holding resources either way."""
        self.transition(
            job_id, "failed", error=error, final_status="failed", completed_at=time.time()
        )
        self.store.execute("UPDATE jobs SET cancel_requested = 0 WHERE id = ?", (job_id,))
        self.uploads.release(job_id)

    # --- cancel --------------------------------------------------------------------------

    def cancel(self, job_id: str) -> dict[str, Any]:
        self.require(job_id)
        now = time.time()
        # Whichever of the two updates matches the job's state at this instant wins; a
        # job that moves on from pending meanwhile is caught by the second one.
        if self.transition(
            job_id, "cancelled", ("pending",), final_status="cancelled", completed_at=now
        ):
            self.uploads.release(job_id)  # its container was never started
            message = "Job cancelled before it started"
        elif self.transition(
            job_id,
            "cancelled",
            WITH_CONTAINER,
            final_status="cancelled",
            cancel_requested=1,
            completed_at=now,
        ):
            message = "Job cancelled; its container is being stopped"
            self.cancel_container(job_id)
        else:
            status = self.require(job_id)["status"]
            raise ServiceError(
                409,
                "job_already_terminal",
                f"Job {job_id} has already ended ({status})",
                {"status": status},
            )
        log.info("job %s cancelled", job_id)
        return {"job_id": job_id, "status": "cancelled", "message": message}

    def cancel_container(self, job_id: str) -> None:
        # SIGTERM, 10 s grace, SIGKILL: far too long to hold an HTTP request.
        def stop() -> None:
            try:
                self.runtime.cancel(job_id)
            except Exception:
                log.exception("job %s: cancel failed; recovery will retry", job_id)

        threading.Thread(target=stop, name=f"cancel-{job_id}", daemon=True).start()

    def fail_on_recovery(self, job_id: str, seen_status: str, error: str) -> None:
        """The container of a pending/starting/running job is gone (api.md recovery table),
        or the job is past the end bound. A cancelled job stays cancelled."""
        if seen_status == "cancelled":
            self.cancel_done(job_id)
        elif self.transition(
            job_id,
            "failed",
            (seen_status,),
            error=error,
            final_status="failed",
            completed_at=time.time(),
            copy_in_progress=0,
        ):
            self.uploads.release(job_id)

    def cancel_done(self, job_id: str) -> None:
        """A cancelled job's container is gone: it holds nothing any more."""
        self.store.execute(
            "UPDATE jobs SET cancel_requested = 0, copy_in_progress = 0 WHERE id = ?", (job_id,)
        )
        self.uploads.release(job_id)

    # --- JobHooks ------------------------------------------------------------------------

    def on_running(self, job_id: str, started_at: datetime) -> None:
        started = started_at.timestamp()
        self.transition(job_id, "running", started_at=started)
        self.store.execute(
            "UPDATE jobs SET started_at = ? WHERE id = ? AND started_at IS NULL", (started, job_id)
        )
        self.uploads.consume(job_id)
        log.info("job %s running", job_id)

    def on_output(self, job_id: str) -> None:
        self.logbus.notify(job_id)

    def on_copying_artifacts(self, job_id: str) -> None:
        self.store.execute(
            "UPDATE jobs SET copy_in_progress = 1, updated_at = ? WHERE id = ?",
            (time.time(), job_id),
        )

    def on_finished(self, job_id: str, outcome: JobOutcome) -> None:
        ended = outcome.ended_at.timestamp()
        with self.store.transaction() as conn:
            row = self.row(job_id)
            if row is None:
                log.warning("runtime reported an unknown job %s", job_id)
                return
            if not jobstate.holds_resources(row):
                # Someone else ended it meanwhile (the reconciler's bound): keep that end.
                log.info("job %s had already ended (%s)", job_id, row["status"])
                return
            if row["status"] in WITH_CONTAINER:
                status = "cancelled" if row["cancel_requested"] else outcome.status
                self.transition(
                    job_id,
                    status,
                    (row["status"],),
                    final_status=status,
                    exit_code=outcome.exit_code,
                    error=outcome.error,
                    completed_at=ended,
                )
            elif row["status"] == "cancelled":
                # Never becomes completed; keep the time of the cancel, learn the exit code.
                conn.execute(
                    "UPDATE jobs SET exit_code = ?, error = coalesce(error, ?) WHERE id = ?",
                    (
                        outcome.exit_code,
                        outcome.error if outcome.status != "completed" else None,
                        job_id,
                    ),
                )
            for artifact in outcome.artifacts:
                conn.execute(
                    "INSERT OR REPLACE INTO artifacts (job_id, name, size_bytes, created_at) "
                    "VALUES (?, ?, ?, ?)",
                    (job_id, artifact.name, artifact.size_bytes, artifact.created_at.timestamp()),
                )
            conn.execute(
                "UPDATE jobs SET copy_in_progress = 0, cancel_requested = 0, updated_at = ? "
                "WHERE id = ?",
                (time.time(), job_id),
            )
        self.logbus.notify(job_id, status=True)  # the log is complete now
        self.uploads.release(job_id)
        log.info("job %s finished: %s (exit %s)", job_id, outcome.status, outcome.exit_code)
