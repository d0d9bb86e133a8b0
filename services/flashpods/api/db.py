"""SQLite storage (WAL) through sqlite-utils, with versioned migrations.

One connection per process, serialised by a lock: the API's writes are tiny and SQLite
allows one writer anyway, so this is simpler than a pool and just as fast. Multi-row
changes go through `transaction()` (BEGIN IMMEDIATE), so concurrent requests never see
half of a job creation. Writes are plain SQL because sqlite-utils' helpers commit on
their own, which would end our outer transaction early.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlite_utils

from flashpods.api import jobstate


def _v1_initial(db: sqlite_utils.Database) -> None:
    db.table("jobs").create(
        {
            "id": str,
            "type": str,
            "status": str,
            "final_status": str,  # completed|failed|timed_out|cancelled, kept through cleanup
            "command": str,
            "task": str,
            "context": str,
            "git_branch": str,
            "files_id": str,
            "image": str,
            "cpus": int,
            "memory_gb": int,
            "timeout_minutes": int,
            "exit_code": int,
            "error": str,
            "client_job_id": str,
            "created_at": float,
            "started_at": float,
            "completed_at": float,
            "updated_at": float,
            "cancel_requested": int,
            "copy_in_progress": int,
            "logs_deleted_at": float,
            "artifacts_deleted_at": float,
        },
        pk="id",
        not_null={"type", "status", "created_at", "updated_at"},
        defaults={"cancel_requested": 0, "copy_in_progress": 0},
    )
    db.table("jobs").create_index(["status"])
    db.table("jobs").create_index(["created_at"])
    db.table("idempotency_keys").create(
        {"key": str, "job_id": str, "active": int, "created_at": float, "deactivated_at": float},
        not_null={"key", "job_id", "active", "created_at"},
    )
    # The uniqueness that makes concurrent duplicate creates produce exactly one job.
    db.execute(
        "CREATE UNIQUE INDEX idx_idempotency_active ON idempotency_keys(key) WHERE active = 1"
    )
    db.table("uploads").create(
        {
            "upload_id": str,
            "state": str,  # uploading|finalized|consumed|expired
            "size_bytes": int,
            "file_count": int,
            "fingerprint": str,  # of the snapshot at finalize, checked again at job start
            "job_id": str,  # the job that reserved (then consumed) it
            "created_at": float,
            "finalized_at": float,
            "expires_at": float,
            "updated_at": float,
        },
        pk="upload_id",
        not_null={"state", "created_at", "updated_at"},
    )
    db.table("uploads").create_index(["state"])
    db.table("artifacts").create(
        {"job_id": str, "name": str, "size_bytes": int, "created_at": float},
        pk=("job_id", "name"),
        not_null={"size_bytes", "created_at"},
    )


def _v2_disk_gb(db: sqlite_utils.Database) -> None:
    # Jobs created before disk_gb existed had no scratch limit: NULL says so.
    db.execute("ALTER TABLE jobs ADD COLUMN disk_gb INTEGER")


def _v3_upload_bases(db: sqlite_utils.Database) -> None:
    # base_upload_id: the upload whose tree a new upload started from (delta re-upload);
    # kept_until: a consumed upload's snapshot, kept after its job as the next base.
    db.execute("ALTER TABLE uploads ADD COLUMN base_upload_id TEXT")
    db.execute("ALTER TABLE uploads ADD COLUMN kept_until REAL")
    db.execute("CREATE INDEX idx_uploads_base ON uploads(base_upload_id)")


# (version, migration). Append only; never edit a released one.
MIGRATIONS: list[tuple[int, Callable[[sqlite_utils.Database], None]]] = [
    (1, _v1_initial),
    (2, _v2_disk_gb),
    (3, _v3_upload_bases),
]


class Store:
    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(
            str(path), check_same_thread=False, isolation_level=None, timeout=30
        )
        self.conn.row_factory = None
        self.db = sqlite_utils.Database(self.conn)
        self.lock = threading.RLock()
        self.conn.execute("PRAGMA busy_timeout = 30000")
        self.db.enable_wal()
        # A database created under an older, wider umask: SQLite gives its WAL and SHM
        # the database file's mode, so closing the file closes them too.
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(f"{path}{suffix}", 0o600)
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self.migrate()
        jobstate.guard(self.conn)

    def migrate(self) -> None:
        with self.lock:
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
            )
            done = {row[0] for row in self.conn.execute("SELECT version FROM schema_migrations")}
            for version, migration in MIGRATIONS:
                if version in done:
                    continue
                with self.transaction():
                    migration(self.db)
                    self.conn.execute(
                        "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                        (version, time.time()),
                    )

    def schema_version(self) -> int:
        row = self.conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
        return int(row[0] or 0)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self.lock:
            if self.conn.in_transaction:  # nested: the outer one commits
                yield self.conn
                return
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def query(
        self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()
    ) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.db.query(sql, params))

    def one(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> dict[str, Any] | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None

    def execute(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> int:
        """Run one statement (autocommit unless inside transaction()); rows changed."""
        with self.lock:
            return self.conn.execute(sql, params).rowcount

    def close(self) -> None:
        with self.lock:
            self.conn.close()
