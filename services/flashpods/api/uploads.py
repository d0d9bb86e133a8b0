"""Uploads: rsync drops a folder in FLASHPODS_UPLOADS_PATH/{id}/, the client finalizes it.

Immutability of a finalized upload: finalize renames the directory out of the rsync
module into FLASHPODS_SNAPSHOTS_PATH/{id} (same filesystem, so the rename is atomic and
rsync cannot address it any more). A writer that was still running during finalize is
caught by the fingerprint (paths, sizes, modes, mtimes) taken at finalize and checked
again when a job is created. Sizes are measured with lstat: symlinks are never followed.

States: uploading -> finalized -> consumed; uploading|finalized -> expired.
A finalized upload is reserved by the job created on it (`job_id`), consumed when that
job's container reaches `running`; its snapshot is mounted read-only into the job.

Delta re-upload: an upload created with a base (`POST /uploads`, the laptop's last
upload of the same folder) starts as that base's tree, so rsync sends only what changed.
A snapshot still in use (finalized, or its job not over) is copied (treecopy: new inodes,
nothing shared); a snapshot whose job is over is *kept* (`kept_until`) for
upload_finalized_ttl as the next base and then *moved* into the new upload: no job can
use it any more, so it changes hands instead of being copied. A kept snapshot goes when
its TTL ends, when a newer upload built on it is finalized, or when space is needed.
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
from typing import Any, Literal

from flashpods.api.config import Config
from flashpods.api.db import Store
from flashpods.api.ids import is_upload_id
from flashpods.api.jobstate import HOLDING_SQL, holds_resources
from flashpods.api.treecopy import FATAL_ERRNOS, copy_tree
from flashpods.common.errors import ServiceError
from flashpods.common.fdtree import remove_path
from flashpods.common.timefmt import from_epoch, iso_z
from flashpods.common.uploadlimits import TOO_MANY_ENTRIES, over

log = logging.getLogger("flashpods.api.uploads")


@dataclass(frozen=True)
class TreeStats:
    size_bytes: int
    file_count: int  # non-directory entries
    entry_count: int  # every entry, directories too (flashpods.common.uploadlimits)
    fingerprint: str


def tree_stats(root: Path) -> TreeStats:
    """Size and count of everything under root, by lstat; never follows a symlink.
    The fingerprint hashes one line per entry (relative path, mode, size, mtime), each
    directory's entries in name order, directories depth first."""
    size = count = every = 0
    digest = hashlib.sha256()
    stack = [(str(root), "")]  # (directory, its path relative to root with a trailing /)
    while stack:
        directory, prefix = stack.pop()
        with os.scandir(directory) as scan:
            entries = sorted(scan, key=lambda e: e.name)
        lines = []
        for entry in entries:
            info = entry.stat(follow_symlinks=False)
            rel = prefix + entry.name
            lines.append(f"{rel}\0{info.st_mode}\0{info.st_size}\0{info.st_mtime_ns}\n")
            every += 1
            if stat.S_ISDIR(info.st_mode):
                stack.append((entry.path, rel + "/"))
            else:
                size += info.st_size
                count += 1
        digest.update("".join(lines).encode("utf-8", "surrogateescape"))
    return TreeStats(size, count, every, digest.hexdigest())


def staging_name(upload_id: str) -> str:
    """Where a base is copied to, in the snapshots directory (outside the rsync module),
    before the copy becomes the new upload's directory."""
    return f".copy-{upload_id}"


def remove_tree(path: Path) -> None:
    """Delete a directory (or a stray file/symlink) without following symlinks, at any
    depth; rsync -a keeps modes, so directories we own are made writable on the way.
    A failure is logged, not fatal (the cleanup loop tries again)."""
    try:
        remove_path(path)
    except OSError as exc:
        log.warning("could not remove %s: %s", path.name, exc.strerror)


# Why a named base was not used (the upload then starts empty: a full upload).
BaseProblem = Literal["not_found", "not_finalized", "gone"]
# How a base is used: its snapshot copied (still in use) or moved (its job is over).
BaseUse = Literal["copy", "move"]
# Snapshots on disk: finalized, held by a job, or kept as a base after their job.
_ON_DISK_SQL = (
    "(state = 'finalized' OR (state = 'consumed' AND (kept_until IS NOT NULL OR "
    f"job_id IN (SELECT id FROM jobs WHERE {HOLDING_SQL}))))"
)


def base_use(row: dict[str, Any] | None, job: dict[str, Any] | None) -> BaseUse | BaseProblem:
    """Pure: what a new upload can do with the upload `row` named as its base, given the
    job that reserved or consumed it (status, cancel_requested), if any."""
    if row is None:
        return "not_found"
    if row["state"] == "uploading":
        return "not_finalized"
    job_holds_it = job is not None and holds_resources(job)
    if row["state"] == "finalized" or (row["state"] == "consumed" and job_holds_it):
        return "copy"
    if row["state"] == "consumed" and row["kept_until"] is not None:
        return "move"
    return "gone"


def not_found(upload_id: str) -> ServiceError:
    return ServiceError(
        404, "upload_not_found", f"Upload {upload_id} not found", {"upload_id": upload_id}
    )


class Uploads:
    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store
        # Finalize walks the tree; one lock keeps creation, finalize, delete and cleanup
        # of uploads from racing each other without holding the database lock during the
        # walk. A base is copied outside the lock: `copying` (upload id -> bytes) holds
        # those ids and counts their bytes against the total.
        self.lock = threading.Lock()
        self.copying: dict[str, int] = {}

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
            "base_upload_id": row["base_upload_id"],
            "created_at": iso_z(from_epoch(row["created_at"])),
            "finalized_at": iso_z(from_epoch(row["finalized_at"])),
            "expires_at": iso_z(from_epoch(expires)),
        }

    def get(self, upload_id: str) -> dict[str, Any]:
        return self.render(self.lookup(upload_id))

    # --- creation, with a base ---------------------------------------------------------

    def create(self, upload_id: str, base_id: str | None) -> dict[str, Any]:
        """A new upload directory in the rsync module: empty, or the tree of `base_id`'s
        snapshot. A base that cannot be used is no error: the upload starts empty and
        `base_unavailable` says why."""
        try:
            with self.lock:
                self._require_new(upload_id)
                base = None if base_id is None else self.row(base_id) or self.discover(base_id)
                use = None if base_id is None else self._base_use(base)
                if use == "move":
                    assert base is not None
                    self._move_base(base, upload_id)
                    return self._created(upload_id, None)
                if use != "copy":
                    self._create_empty(upload_id)
                    return self._created(upload_id, use)
                assert base is not None
                self._make_room(base["size_bytes"], None)
                self.copying[upload_id] = base["size_bytes"]
            return self._created(upload_id, self._create_copy(upload_id, base))
        except OSError as exc:
            if exc.errno not in FATAL_ERRNOS:
                raise
            raise ServiceError(
                507,
                "insufficient_storage",
                "The host has no space left to start this upload",
                cause=f"creating upload {upload_id}: {exc}",
            ) from None

    def _create_empty(self, upload_id: str) -> None:
        os.mkdir(self.incoming_dir(upload_id), 0o700)
        self._insert(upload_id, None)

    def _create_copy(self, upload_id: str, base: dict[str, Any]) -> BaseProblem | None:
        """Copy outside the lock into a staging directory beside the snapshots (rsync
        cannot reach it, the cleanup loop leaves it alone while `copying` names it),
        then rename it into the module."""
        staging = self.config.snapshots_path / staging_name(upload_id)
        try:
            remove_tree(staging)  # a leftover of a crash during a copy
            copied = self._copy_base(base, staging)
            with self.lock:
                del self.copying[upload_id]
                self._require_new(upload_id)
                if not copied:
                    self._create_empty(upload_id)
                    return "gone"
                os.rename(staging, self.incoming_dir(upload_id))
                self._insert(upload_id, base["upload_id"])
                return None
        finally:
            with self.lock:
                self.copying.pop(upload_id, None)
                remove_tree(staging)  # gone already unless the copy failed

    def _require_new(self, upload_id: str) -> None:
        if (
            upload_id in self.copying
            or self.row(upload_id) is not None
            or os.path.lexists(self.incoming_dir(upload_id))
        ):
            raise ServiceError(
                409,
                "upload_already_exists",
                f"Upload {upload_id} already exists; choose a new id",
                {"upload_id": upload_id},
            )

    def _base_use(self, base: dict[str, Any] | None) -> BaseUse | BaseProblem:
        use = base_use(base, None if base is None else self._job_of(base))
        if use in ("copy", "move"):
            assert base is not None
            snapshot = self.snapshot_dir(base["upload_id"])
            if not snapshot.is_dir() or snapshot.is_symlink():
                return "gone"
        return use

    def _job_of(self, row: dict[str, Any]) -> dict[str, Any] | None:
        """The job that reserved or consumed the upload `row`, if any."""
        if row["job_id"] is None:
            return None
        return self.store.one(
            "SELECT status, cancel_requested FROM jobs WHERE id = ?", (row["job_id"],)
        )

    def _move_base(self, base: dict[str, Any], upload_id: str) -> None:
        """The kept snapshot becomes the new upload's directory (its job is over, nothing
        can use it any more); it counts as the new upload's from now on."""
        os.rename(self.snapshot_dir(base["upload_id"]), self.incoming_dir(upload_id))
        with self.store.transaction() as conn:
            conn.execute(
                "UPDATE uploads SET kept_until = NULL, updated_at = ? WHERE upload_id = ?",
                (time.time(), base["upload_id"]),
            )
            self._insert(upload_id, base["upload_id"])
        log.info("upload %s starts from %s (moved)", upload_id, base["upload_id"])

    def _copy_base(self, base: dict[str, Any], staging: Path) -> bool:
        """False if the base went away meanwhile (deleted, expired)."""
        started = time.monotonic()
        try:
            result = copy_tree(self.snapshot_dir(base["upload_id"]), staging)
        except OSError as exc:
            if exc.errno in FATAL_ERRNOS:
                raise
            log.warning("upload base %s could not be copied: %s", base["upload_id"], exc)
            return False
        log.info(
            "upload base %s copied: %d files, %d bytes, %d left to rsync, %.3fs",
            base["upload_id"],
            result.files,
            result.bytes,
            result.skipped,
            time.monotonic() - started,
        )
        return True

    def _insert(self, upload_id: str, base_id: str | None) -> None:
        now = time.time()
        self.store.execute(
            "INSERT INTO uploads (upload_id, state, base_upload_id, created_at, updated_at) "
            "VALUES (?, 'uploading', ?, ?, ?)",
            (upload_id, base_id, now, now),
        )

    def _created(self, upload_id: str, problem: BaseProblem | None) -> dict[str, Any]:
        return {**self.get(upload_id), "base_unavailable": problem}

    # --- finalize ----------------------------------------------------------------------

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
            self._check_quota(upload_id, stats)
            snapshot = self.snapshot_dir(upload_id)
            remove_tree(snapshot)  # a leftover of a crash between rename and commit
            os.rename(incoming, snapshot)
            now = time.time()
            self.store.execute(
                "UPDATE uploads SET state = 'finalized', size_bytes = ?, file_count = ?, "
                "fingerprint = ?, finalized_at = ?, updated_at = ? WHERE upload_id = ?",
                (stats.size_bytes, stats.file_count, stats.fingerprint, now, now, upload_id),
            )
            if row["base_upload_id"] is not None:
                # The laptop's next upload of this folder starts from this one.
                self._drop_kept(row["base_upload_id"])
            log.info(
                "upload %s finalized: %d bytes, %d files",
                upload_id,
                stats.size_bytes,
                stats.file_count,
            )
            return self.get(upload_id)

    # --- space -------------------------------------------------------------------------

    def used_bytes(self, except_upload: str | None) -> int:
        """Bytes of every snapshot on disk and every upload started from a base (its
        base's size until it is finalized), plus the copies in progress."""
        exclude = except_upload or ""
        snapshots = self.store.one(
            "SELECT coalesce(sum(size_bytes), 0) AS used FROM uploads "
            f"WHERE upload_id != ? AND {_ON_DISK_SQL}",
            (exclude,),
        )
        started = self.store.one(
            "SELECT coalesce(sum(b.size_bytes), 0) AS used FROM uploads u "
            "JOIN uploads b ON b.upload_id = u.base_upload_id "
            "WHERE u.state = 'uploading' AND u.upload_id != ?",
            (exclude,),
        )
        copies = sum(size for upload_id, size in self.copying.items() if upload_id != exclude)
        return (
            int(snapshots["used"] if snapshots else 0)
            + int(started["used"] if started else 0)
            + copies
        )

    def _make_room(self, size: int, upload_id: str | None) -> None:
        """Kept snapshots (only ever a head start for an upload) go, oldest first, before
        anything is refused for lack of space. Under self.lock."""
        total = self.config.uploads_total_max_bytes
        used = self.used_bytes(upload_id)
        if used + size <= total:
            return
        for kept in self.store.query(
            "SELECT upload_id, size_bytes FROM uploads "
            "WHERE state = 'consumed' AND kept_until IS NOT NULL ORDER BY kept_until"
        ):
            self._drop_kept(kept["upload_id"])
            used -= kept["size_bytes"] or 0
            if used + size <= total:
                return
        raise ServiceError(
            507,
            "insufficient_storage",
            "Finalizing this upload would exceed the total upload storage"
            if upload_id is not None
            else "Copying this upload's base would exceed the total upload storage",
            {"size_bytes": size, "used_bytes": used, "total_max_bytes": total},
        )

    def _check_quota(self, upload_id: str, stats: TreeStats) -> None:
        size, limit = stats.size_bytes, self.config.upload_max_bytes
        if over(size, limit):
            raise ServiceError(
                507,
                "insufficient_storage",
                f"Upload {upload_id} is {size} bytes, over the per-upload maximum of {limit}",
                {"size_bytes": size, "max_upload_bytes": limit},
            )
        entries, most = stats.entry_count, self.config.upload_max_entries
        if over(entries, most):
            raise ServiceError(
                507,
                TOO_MANY_ENTRIES,
                f"Upload {upload_id} has {entries} entries (files, directories, links), "
                f"over the per-upload maximum of {most}",
                {"entry_count": entries, "max_upload_entries": most},
            )
        self._make_room(size, upload_id)

    # --- the end of an upload ----------------------------------------------------------

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
        self.store.execute("UPDATE uploads SET kept_until = NULL WHERE upload_id = ?", (upload_id,))
        remove_tree(self.incoming_dir(upload_id))
        remove_tree(self.snapshot_dir(upload_id))

    def _drop_kept(self, upload_id: str) -> None:
        """A kept snapshot is not needed any more. Under self.lock."""
        if self.store.execute(
            "UPDATE uploads SET kept_until = NULL, updated_at = ? "
            "WHERE upload_id = ? AND state = 'consumed' AND kept_until IS NOT NULL",
            (time.time(), upload_id),
        ):
            remove_tree(self.snapshot_dir(upload_id))

    def drop_expired_kept(self, now: float) -> int:
        """Kept snapshots past their TTL go. Under self.lock."""
        rows = self.store.query(
            "SELECT upload_id FROM uploads WHERE state = 'consumed' AND kept_until < ?", (now,)
        )
        for row in rows:
            self._drop_kept(row["upload_id"])
        return len(rows)

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
        """The job ended. A snapshot it ran on is kept as the next upload's base unless a
        newer upload built on it is finalized already; a job that never ran expires its
        upload."""
        row = self.store.one("SELECT * FROM uploads WHERE job_id = ?", (job_id,))
        if row is None:
            return
        upload_id = row["upload_id"]
        with self.lock:
            superseded = self.store.one(
                "SELECT 1 AS x FROM uploads WHERE base_upload_id = ? "
                "AND state IN ('finalized', 'consumed')",
                (upload_id,),
            )
            snapshot = self.snapshot_dir(upload_id)
            if (
                row["state"] != "consumed"
                or superseded is not None
                or not snapshot.is_dir()
                or snapshot.is_symlink()
            ):
                self.expire(upload_id)
                return
            now = time.time()
            self.store.execute(
                "UPDATE uploads SET kept_until = ?, updated_at = ? WHERE upload_id = ?",
                (now + self.config.upload_finalized_ttl, now, upload_id),
            )
