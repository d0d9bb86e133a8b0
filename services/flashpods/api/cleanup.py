"""The cleanup loop: TTLs and total-size caps for uploads, logs and artifacts.

Only ended jobs are touched. When a job's artifacts go (TTL, 1 h) it becomes `cleaning`;
once its log is gone too (TTL 24 h, or the 10 GB cap took it) it becomes `cleaned` and
only then is its idempotency key deactivated.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flashpods.api import jobstate
from flashpods.api.config import Config
from flashpods.api.db import Store
from flashpods.api.ids import is_job_id, is_upload_id
from flashpods.api.jobstate import holds_resources, settled, status_in
from flashpods.api.logs import log_path
from flashpods.api.uploads import Uploads, remove_tree, staging_name
from flashpods.common.jobstates import ENDED

log = logging.getLogger("flashpods.api.cleanup")

# An ended job whose container is still stopping (cancel) or copying is not ended yet here.
_SETTLED = f"{status_in((*ENDED, 'cleaning'))} AND cancel_requested = 0 AND copy_in_progress = 0"


@dataclass
class Report:
    uploads_expired: int = 0
    kept_snapshots_dropped: int = 0
    orphans_removed: int = 0
    logs_deleted: int = 0
    artifacts_deleted: int = 0
    jobs_cleaned: int = 0


class Cleaner:
    def __init__(self, config: Config, store: Store, uploads: Uploads) -> None:
        self.config = config
        self.store = store
        self.uploads = uploads

    def run_once(self, now: float | None = None) -> Report:
        now = time.time() if now is None else now
        report = Report()
        self._uploads(now, report)
        self._logs(now, report)
        self._artifacts(now, report)
        self._finish_jobs(report)
        self._orphan_job_files(report)
        if report != Report():
            log.info("cleanup: %s", report)
        return report

    # --- uploads ---------------------------------------------------------------------------

    def _uploads(self, now: float, report: Report) -> None:
        cfg = self.config
        with self.uploads.lock:
            for entry in _entries(cfg.uploads_path):
                row = self.uploads.row(entry.name) if is_upload_id(entry.name) else None
                if row is None and is_upload_id(entry.name) and entry.is_dir(follow_symlinks=False):
                    self.uploads.discover(entry.name)
                elif row is None or row["state"] != "uploading":
                    remove_tree(Path(entry.path))
                    report.orphans_removed += 1
            copying = {staging_name(upload_id) for upload_id in self.uploads.copying}
            for entry in _entries(cfg.snapshots_path):
                if entry.name in copying:
                    continue
                row = self.uploads.row(entry.name) if is_upload_id(entry.name) else None
                if row is None or not self._snapshot_needed(row):
                    remove_tree(Path(entry.path))
                    report.orphans_removed += 1
            expired = self.store.query(
                "SELECT upload_id FROM uploads WHERE "
                "(state = 'uploading' AND created_at + ? < ?) OR "
                "(state = 'finalized' AND job_id IS NULL AND finalized_at + ? < ?)",
                (cfg.upload_unfinalized_ttl, now, cfg.upload_finalized_ttl, now),
            )
            for row in expired:
                self.uploads.expire(row["upload_id"])
                report.uploads_expired += 1
            report.kept_snapshots_dropped += self.uploads.drop_expired_kept(now)

    def _snapshot_needed(self, row: dict[str, Any]) -> bool:
        """Finalized, kept as a base, or consumed by a job whose container may still
        have it mounted."""
        if row["state"] == "finalized":
            return True
        if row["state"] != "consumed" or row["job_id"] is None:
            return False
        if row["kept_until"] is not None:
            return True
        job = self.store.one(
            "SELECT status, cancel_requested FROM jobs WHERE id = ?", (row["job_id"],)
        )
        return job is not None and holds_resources(job)

    # --- logs -------------------------------------------------------------------------------

    def log_files(self, job_id: str) -> list[Path]:
        """The job's log plus the runtime's hidden companions (`.{job_id}.*`, e.g. conmon's)."""
        return [
            log_path(self.config, job_id),
            *self.config.logs_path.glob(f".{job_id}.*"),
        ]

    def _delete_log(self, job_id: str, report: Report) -> None:
        for path in self.log_files(job_id):
            path.unlink(missing_ok=True)
        self.store.execute(
            "UPDATE jobs SET logs_deleted_at = ?, updated_at = ? WHERE id = ?",
            (time.time(), time.time(), job_id),
        )
        report.logs_deleted += 1

    def _logs(self, now: float, report: Report) -> None:
        for row in self.store.query(
            f"SELECT id FROM jobs WHERE {_SETTLED} AND logs_deleted_at IS NULL "
            "AND completed_at + ? < ?",
            (self.config.logs_ttl, now),
        ):
            self._delete_log(row["id"], report)
        # Over the total cap: the oldest ended jobs' logs go first.
        live = self.store.query(
            "SELECT id, status, cancel_requested, copy_in_progress, completed_at FROM jobs "
            "WHERE logs_deleted_at IS NULL AND status != 'pending' ORDER BY completed_at"
        )
        sizes = {row["id"]: sum(map(_size, self.log_files(row["id"]))) for row in live}
        total = sum(sizes.values())
        for row in live:
            if total <= self.config.logs_total_max_bytes:
                break
            if settled(row):
                self._delete_log(row["id"], report)
                total -= sizes[row["id"]]

    # --- artifacts --------------------------------------------------------------------------

    def _delete_artifacts(self, job_id: str, report: Report) -> None:
        with self.store.transaction() as conn:
            jobstate.transition(self.store, job_id, "cleaning")
            conn.execute("DELETE FROM artifacts WHERE job_id = ?", (job_id,))
            conn.execute(
                "UPDATE jobs SET artifacts_deleted_at = ? WHERE id = ?", (time.time(), job_id)
            )
        remove_tree(self.config.artifacts_path / job_id)
        report.artifacts_deleted += 1

    def _artifacts(self, now: float, report: Report) -> None:
        for row in self.store.query(
            f"SELECT id FROM jobs WHERE {_SETTLED} AND artifacts_deleted_at IS NULL "
            "AND completed_at + ? < ?",
            (self.config.artifacts_ttl, now),
        ):
            self._delete_artifacts(row["id"], report)
        live = self.store.query(
            "SELECT j.id, j.status, j.cancel_requested, j.copy_in_progress, "
            "coalesce(sum(a.size_bytes), 0) AS size "
            "FROM jobs j JOIN artifacts a ON a.job_id = j.id "
            "WHERE j.artifacts_deleted_at IS NULL GROUP BY j.id ORDER BY j.completed_at"
        )
        total = sum(row["size"] for row in live)
        for row in live:
            if total <= self.config.artifacts_total_max_bytes:
                break
            if settled(row):
                self._delete_artifacts(row["id"], report)
                total -= row["size"]

    # --- jobs -------------------------------------------------------------------------------

    def _finish_jobs(self, report: Report) -> None:
        done = self.store.query(
            f"SELECT id FROM jobs WHERE {_SETTLED} AND logs_deleted_at IS NOT NULL "
            "AND artifacts_deleted_at IS NOT NULL"
        )
        for row in done:
            with self.store.transaction() as conn:
                # cleaning is the only way in (ended -> cleaning -> cleaned).
                jobstate.transition(self.store, row["id"], "cleaning")
                jobstate.transition(self.store, row["id"], "cleaned")
                conn.execute(
                    "UPDATE idempotency_keys SET active = 0, deactivated_at = ? "
                    "WHERE job_id = ? AND active = 1",
                    (time.time(), row["id"]),
                )
            report.jobs_cleaned += 1

    def _orphan_job_files(self, report: Report) -> None:
        """Log files and artifact directories of jobs the database does not know."""
        for entry in _entries(self.config.artifacts_path):
            if (
                is_job_id(entry.name)
                and self.store.one("SELECT 1 AS x FROM jobs WHERE id = ?", (entry.name,)) is None
            ):
                remove_tree(Path(entry.path))
                report.orphans_removed += 1
        for entry in _entries(self.config.logs_path):
            job_id = entry.name.lstrip(".").split(".", 1)[0]
            if (
                is_job_id(job_id)
                and self.store.one("SELECT 1 AS x FROM jobs WHERE id = ?", (job_id,)) is None
            ):
                Path(entry.path).unlink(missing_ok=True)
                report.orphans_removed += 1


def _entries(directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as entries:
            return list(entries)
    except FileNotFoundError:
        return []


def _size(path: Path) -> int:
    try:
        return path.lstat().st_size
    except FileNotFoundError:
        return 0
