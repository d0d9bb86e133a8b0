"""Uploads: rsync drops a folder in FLASHPODS_UPLOADS_PATH/{id}/, the client finalizes it.

Immutability of a finalized upload: finalize renames the directory out of the rsync
module into FLASHPODS_SNAPSHOTS_PATH/{id} (same filesystem, so the rename is atomic and
rsync cannot address it any more). A writer that was still running during finalize is
caught by the fingerprint (paths, sizes, modes, mtimes) taken at finalize and checked
again when a job is created. Sizes are measured with lstat: symlinks are never followed.

States: uploading -> finalized -> consumed; uploading|finalized -> expired.
A finalized upload is reserved by the job created on it (`job_id`), consumed when that
job's container reaches `running`, and its snapshot is deleted once the job ends (it is
bind-mounted at /work until then: deleting it earlier would empty the job's /work).
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flashpods.api.config import Config
from flashpods.api.db import Store
from flashpods.api.ids import is_upload_id
from flashpods.api.jobstate import status_in
from flashpods.common.errors import ServiceError
from flashpods.common.fdtree import remove_path
from flashpods.common.jobstates import ACTIVE
from flashpods.common.timefmt import from_epoch, iso_z

log = logging.getLogger("flashpods.api.uploads")


@dataclass(frozen=True)
class TreeStats:
    size_bytes: int
    file_count: int
    fingerprint: str


def tree_stats(root: Path) -> TreeStats:
    """Size and count of everything under root, by lstat; never follows a symlink."""
    size = count = 0
    digest = hashlib.sha256()
    stack = [root]
    while stack:
        directory = stack.pop()
        with os.scandir(directory) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                info = entry.stat(follow_symlinks=False)
                rel = os.path.relpath(entry.path, root)
                digest.update(
                    f"{rel}\0{info.st_mode}\0{info.st_size}\0{info.st_mtime_ns}\n".encode(
                        "utf-8", "surrogateescape"
                    )
                )
                if stat.S_ISDIR(info.st_mode):
                    stack.append(Path(entry.path))
                else:
                    size += info.st_size
                    count += 1
    return TreeStats(size, count, digest.hexdigest())


def remove_tree(path: Path) -> None:
    """Delete a directory (or a stray file/symlink) without following symlinks, at any
    depth; rsync -a keeps modes, so directories we own are made writable on the way.
    A failure is logged, not fatal (the cleanup loop tries again)."""
    try:
        remove_path(path)
    except OSError as exc:
        log.warning("could not remove %s: %s", path.name, exc.strerror)


def not_found(upload_id: str) -> ServiceError:
    return ServiceError(
        404, "upload_not_found", f"Upload {upload_id} not found", {"upload_id": upload_id}
    )


class Uploads:
    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store
        # Finalize walks the tree; one lock keeps finalize, delete and cleanup of uploads
        # from racing each other without holding the database lock during the walk.
        self.lock = threading.Lock()

    def incoming_dir(self, upload_id: str) -> Path:
        return self.config.uploads_path / upload_id

    def snapshot_dir(self, upload_id: str) -> Path:
        return self.config.snapshots_path / upload_id

    def row(self, upload_id: str) -> dict[str, Any] | None:
        return self.store.one("SELECT * FROM uploads WHERE upload_id = ?", (upload_id,))

    def discover(self, upload_id: str) -> dict[str, Any] | None:
        """An rsync-created directory the API has not seen yet becomes an `uploading` row."""
        if not self.incoming_dir(upload_id).is_dir() or self.incoming_dir(upload_id).is_symlink():
            return None
        now = time.time()
        self.store.execute(
            "INSERT OR IGNORE INTO uploads (upload_id, state, created_at, updated_at) "
            "VALUES (?, 'uploading', ?, ?)",
            (upload_id, now, now),
        )
        return self.row(upload_id)

    def lookup(self, upload_id: str) -> dict[str, Any]:
        if not is_upload_id(upload_id):
            raise not_found(upload_id[:80])
        row = self.row(upload_id) or self.discover(upload_id)
        if row is None:
            raise not_found(upload_id)
        return row

    def render(self, row: dict[str, Any]) -> dict[str, Any]:
        expires: float | None = None
        if row["state"] == "uploading":
            expires = row["created_at"] + self.config.upload_unfinalized_ttl
        elif row["state"] == "finalized" and row["job_id"] is None:
            expires = row["finalized_at"] + self.config.upload_finalized_ttl
        return {
            "upload_id": row["upload_id"],
            "state": row["state"],
            "size_bytes": row["size_bytes"],
            "file_count": row["file_count"],
            "created_at": iso_z(from_epoch(row["created_at"])),
            "finalized_at": iso_z(from_epoch(row["finalized_at"])),
            "expires_at": iso_z(from_epoch(expires)),
        }

    def get(self, upload_id: str) -> dict[str, Any]:
        return self.render(self.lookup(upload_id))

    def finalize(self, upload_id: str) -> dict[str, Any]:
        with self.lock:
            row = self.lookup(upload_id)
            state = row["state"]
            if state == "finalized":
                raise ServiceError(
                    409, "upload_already_finalized", f"Upload {upload_id} is already finalized"
                )
            if state == "consumed":
                raise ServiceError(
                    409, "upload_already_consumed", f"Upload {upload_id} was used by a job"
                )
            if state == "expired":
                raise ServiceError(410, "upload_expired", f"Upload {upload_id} has expired")
            incoming = self.incoming_dir(upload_id)
            if not incoming.is_dir() or incoming.is_symlink():
                raise not_found(upload_id)
            stats = tree_stats(incoming)
            self._check_quota(upload_id, stats.size_bytes)
            snapshot = self.snapshot_dir(upload_id)
            remove_tree(snapshot)  # a leftover of a crash between rename and commit
            os.rename(incoming, snapshot)
            now = time.time()
            self.store.execute(
                "UPDATE uploads SET state = 'finalized', size_bytes = ?, file_count = ?, "
                "fingerprint = ?, finalized_at = ?, updated_at = ? WHERE upload_id = ?",
                (stats.size_bytes, stats.file_count, stats.fingerprint, now, now, upload_id),
            )
            log.info(
                "upload %s finalized: %d bytes, %d files",
                upload_id,
                stats.size_bytes,
                stats.file_count,
            )
            return self.get(upload_id)

    def _check_quota(self, upload_id: str, size: int) -> None:
        limit = self.config.upload_max_bytes
        if size > limit:
            raise ServiceError(
                507,
                "insufficient_storage",
                f"Upload {upload_id} is {size} bytes, over the per-upload maximum of {limit}",
                {"size_bytes": size, "max_upload_bytes": limit},
            )
        row = self.store.one(
            "SELECT coalesce(sum(size_bytes), 0) AS used FROM uploads "
            "WHERE upload_id != ? AND (state = 'finalized' OR (state = 'consumed' AND job_id IN "
            f"(SELECT id FROM jobs WHERE {status_in(ACTIVE)})))",
            (upload_id,),
        )
        used = int(row["used"]) if row else 0
        total = self.config.uploads_total_max_bytes
        if used + size > total:
            raise ServiceError(
                507,
                "insufficient_storage",
                "Finalizing this upload would exceed the total upload storage",
                {"size_bytes": size, "used_bytes": used, "total_max_bytes": total},
            )

    def delete(self, upload_id: str) -> None:
        with self.lock:
            row = self.lookup(upload_id)
            if row["state"] == "consumed":
                raise ServiceError(
                    409, "upload_already_consumed", f"Upload {upload_id} was used by a job"
                )
            if row["state"] == "finalized" and row["job_id"] is not None:
                raise ServiceError(
                    409,
                    "upload_in_use",
                    f"Upload {upload_id} is about to be used by job {row['job_id']}",
                    {"job_id": row["job_id"]},
                )
            self.expire(upload_id)

    def expire(self, upload_id: str) -> None:
        """State expired (unless consumed) and both directories gone."""
        now = time.time()
        self.store.execute(
            "UPDATE uploads SET state = 'expired', updated_at = ? "
            "WHERE upload_id = ? AND state IN ('uploading', 'finalized')",
            (now, upload_id),
        )
        remove_tree(self.incoming_dir(upload_id))
        remove_tree(self.snapshot_dir(upload_id))

    def snapshot_unchanged(self, row: dict[str, Any]) -> bool:
        snapshot = self.snapshot_dir(row["upload_id"])
        if not snapshot.is_dir() or snapshot.is_symlink():
            return False
        return tree_stats(snapshot).fingerprint == row["fingerprint"]

    def consume(self, job_id: str) -> None:
        self.store.execute(
            "UPDATE uploads SET state = 'consumed', updated_at = ? "
            "WHERE job_id = ? AND state = 'finalized'",
            (time.time(), job_id),
        )

    def release(self, job_id: str) -> None:
        """The job ended: its snapshot goes; if it never ran, the upload is expired."""
        row = self.store.one("SELECT upload_id FROM uploads WHERE job_id = ?", (job_id,))
        if row is None:
            return
        with self.lock:
            self.expire(row["upload_id"])
