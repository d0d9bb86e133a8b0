"""Artifacts: the rules of api.md as pure functions, and the collector.

The job's host directory `{artifacts}/{job_id}` is bind-mounted at /artifacts, so the
"copy" out of the container is done in place once the container has exited (nothing
can write into it any more): every entry is checked, what breaks a rule is removed with
a warning, symlinks that resolve inside /artifacts become hard links to their target (a
plain file for downloads, no extra space), and what stays is reported as records. The
job still completes when entries are skipped.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from flashpods.api.runtime import ArtifactRecord

CONTAINER_ROOT = "/artifacts"
MAX_SYMLINK_HOPS = 40


@dataclass(frozen=True)
class ArtifactLimits:
    max_file_bytes: int = 1 << 30
    max_total_bytes: int = 2 << 30
    max_files: int = 200


class ArtifactCopyError(Exception):
    """Collecting failed; `code` is the job's error (api.md)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code


def name_problem(name: str) -> str | None:
    """Why one path component is not an acceptable artifact name, or None."""
    if not name:
        return "empty name"
    if len(name) > 255:
        return "name longer than 255 characters"
    if "/" in name or "\\" in name:
        return "name contains a slash or backslash"
    if ".." in name:
        return "name contains '..'"
    if "\0" in name:
        return "name contains NUL"
    if name != name.strip():
        return "name has leading or trailing whitespace"
    if name == ".":
        return "name is '.'"
    return None


def relative_name_problem(relative: str) -> str | None:
    """For a "/"-separated name relative to the job's directory (downloads use it too)."""
    if not relative:
        return "empty name"
    for part in relative.split("/"):
        problem = name_problem(part)
        if problem:
            return problem
    return None


def resolve_in_tree(
    root: Path, link_parts: tuple[str, ...], hops: int = 0
) -> tuple[str, ...] | None:
    """Where the symlink at root/link_parts points, as components inside root, resolving
    like the kernel would inside the container (root is /artifacts there). None if it
    leaves /artifacts, dangles or loops."""
    if hops > MAX_SYMLINK_HOPS:
        return None
    target = os.readlink(root.joinpath(*link_parts))
    if target.startswith("/"):
        comps = target.split("/")[1:]
        top = CONTAINER_ROOT.strip("/")
        if not comps or comps[0] != top:
            return None
        base: list[str] = []
        comps = comps[1:]
    else:
        base = list(link_parts[:-1])
        comps = target.split("/")
    for comp in comps:
        if comp in ("", "."):
            continue
        if comp == "..":
            if not base:
                return None
            base.pop()
            continue
        base.append(comp)
        here = root.joinpath(*base)
        try:
            mode = here.lstat().st_mode
        except FileNotFoundError:
            return None
        if stat.S_ISLNK(mode):
            resolved = resolve_in_tree(root, tuple(base), hops + 1)
            if resolved is None:
                return None
            base = list(resolved)
    return tuple(base)


Warn = Callable[[str], None]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        for child in path.iterdir():
            _remove(child)
        path.rmdir()
    else:
        path.unlink()


@dataclass
class _Collector:
    root: Path
    limits: ArtifactLimits
    warn: Warn
    records: list[ArtifactRecord]
    total: int = 0

    def walk(self, parts: tuple[str, ...]) -> None:
        directory = self.root.joinpath(*parts)
        # The job may have left a directory unreadable; it is ours (same uid), so open it up.
        os.chmod(directory, 0o755)
        for name in sorted(os.listdir(directory)):
            self.entry((*parts, name))

    def entry(self, parts: tuple[str, ...]) -> None:
        path = self.root.joinpath(*parts)
        shown = "/".join(parts)
        problem = name_problem(parts[-1])
        if problem:
            self.skip(path, repr(shown), problem)
            return
        if parts[-1].startswith("."):
            self.warn(f"artifact {shown!r} has a leading '.' (kept)")
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            self.symlink(parts, path, shown)
        elif stat.S_ISDIR(mode):
            self.walk(parts)
        elif stat.S_ISREG(mode):
            self.regular(path, shown)
        else:
            self.skip(path, repr(shown), "not a regular file or directory")

    def symlink(self, parts: tuple[str, ...], path: Path, shown: str) -> None:
        resolved = resolve_in_tree(self.root, parts)
        if resolved is None:
            self.skip(path, repr(shown), f"symlink dangles or resolves outside {CONTAINER_ROOT}")
            return
        target = self.root.joinpath(*resolved)
        if not stat.S_ISREG(target.lstat().st_mode):
            self.skip(path, repr(shown), "symlink to something other than a file")
            return
        # Replace the link by a hard link to its target: a plain file, no extra space.
        temporary = path.with_name(".flashpods-link-tmp")
        os.link(target, temporary, follow_symlinks=False)
        os.replace(temporary, path)
        self.regular(path, shown)

    def regular(self, path: Path, shown: str) -> None:
        info = path.lstat()
        size = info.st_size
        if size > self.limits.max_file_bytes:
            self.skip(path, repr(shown), f"larger than {self.limits.max_file_bytes} bytes")
        elif len(self.records) >= self.limits.max_files:
            self.skip(path, repr(shown), f"more than {self.limits.max_files} files")
        elif self.total + size > self.limits.max_total_bytes:
            self.skip(path, repr(shown), f"job total over {self.limits.max_total_bytes} bytes")
        else:
            os.chmod(path, 0o644)
            self.total += size
            created = datetime.fromtimestamp(info.st_mtime, UTC)
            name = path.relative_to(self.root).as_posix()
            self.records.append(ArtifactRecord(name, size, created))

    def skip(self, path: Path, shown: str, why: str) -> None:
        self.warn(f"artifact {shown} skipped: {why}")
        _remove(path)


_ERRNO_CODES = {
    errno.ENOSPC: "artifact_copy_disk_full",
    errno.EDQUOT: "artifact_copy_disk_full",
    errno.EFBIG: "artifact_copy_disk_full",
    errno.ENOENT: "artifact_copy_container_gone",
}


def collect_artifacts(root: Path, limits: ArtifactLimits, warn: Warn) -> list[ArtifactRecord]:
    """Apply the rules to the job's (ended) artifacts directory; returns what stays."""
    records: list[ArtifactRecord] = []
    try:
        _Collector(root, limits, warn, records).walk(())
    except OSError as exc:
        code = _ERRNO_CODES.get(exc.errno or 0, "artifact_copy_permission")
        raise ArtifactCopyError(code, os.strerror(exc.errno or 0)) from exc
    return records
