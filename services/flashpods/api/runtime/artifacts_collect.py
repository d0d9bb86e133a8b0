"""Artifacts: the rules of api.md as pure functions, and the collector.

/artifacts is a size-limited tmpfs in the container, pinned by artifactpin.py so it
outlives the container. Once the container has exited the rules are applied to it in
place (the `artifact_copy_*` error codes keep api.md's names): every entry is checked,
what breaks a rule is removed with a warning, symlinks that resolve inside /artifacts
become hard links to their target (a plain file, no extra space in the tmpfs), and what
stays is copied out to the job's host directory `{artifacts}/{job_id}` and reported as
records. The job still completes when entries are skipped.

The job controls the tree, so the walk assumes the worst (docs/runtime.md "Artifacts"):
it goes by directory descriptor, never follows a symlink and never recurses (a stack of
at most MAX_DEPTH open directories); each directory is read in sorted chunks of
CHUNK names, and once MAX_FILES records are kept the rest is removed unsorted, so memory
does not grow with the number of entries. Names that are not valid UTF-8, FIFOs,
sockets, devices, directories deeper than MAX_DEPTH and links that dangle, loop or leave
/artifacts are removed with a warning; only the first MAX_WARNINGS warnings are shown,
then one line counts the rest. Past its deadline the walk gives up: with
`artifact_copy_timeout` while the records are not settled yet, or, once MAX_FILES are
kept, by leaving the rest in the tmpfs (it goes with the pin; nothing unlisted is ever
copied out).
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import itertools
import os
import stat
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from flashpods.api.runtime import ArtifactRecord
from flashpods.common.artifact_names import component_problem
from flashpods.common.fdtree import chmod_entry, open_dir, open_up, remove_entry

CONTAINER_ROOT = "/artifacts"
MAX_SYMLINK_HOPS = 40
MAX_DEPTH = 32  # directory levels below /artifacts that are kept
CHUNK = 1024  # names held per directory level
MAX_WARNINGS = 50
COLLECT_SECONDS = 60.0  # the walk's share of the end bound (docs/runtime.md)
COPY_TIMEOUT = "artifact_copy_timeout"
_PATH = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_LINK_SCRATCH = " fp-link"  # a leading space: an invalid artifact name, never kept


@dataclass(frozen=True)
class ArtifactLimits:
    max_file_bytes: int = 1 << 30
    max_total_bytes: int = 2 << 30
    max_files: int = 200


class ArtifactCollectionError(Exception):
    """Collecting failed; `code` is the job's error (api.md)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code


def shown(name: str) -> str:
    """A name for a log line: quoted, escapes for what is not printable (also the
    surrogates that stand for bytes that are not UTF-8), so the line stays one line."""
    return repr(name)


def is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # os gave us surrogate escapes: the bytes are not UTF-8
        return False
    return True


def resolve_in_tree(root_fd: int, link_parts: tuple[str, ...]) -> tuple[int, str] | None:
    """Where the symlink at link_parts (below the directory root_fd) points, resolved the
    way the kernel would inside the container (root is /artifacts there), one component
    at a time by descriptor: (an O_PATH descriptor of the target's directory, the
    target's name), or None if it leaves /artifacts, dangles, loops or goes too deep.
    The caller closes the descriptor."""
    chain: list[int] = []  # O_PATH descriptors of the resolved directories below root

    def here() -> int:
        return chain[-1] if chain else root_fd

    def reset() -> None:
        while chain:
            os.close(chain.pop())

    try:
        for part in link_parts[:-1]:
            chain.append(os.open(part, _PATH | os.O_DIRECTORY, dir_fd=here()))
        pending: deque[str] = deque()
        hops = 0
        name = link_parts[-1]
        while True:
            info = os.stat(name, dir_fd=here(), follow_symlinks=False)
            if stat.S_ISLNK(info.st_mode):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    return None
                target = os.readlink(name, dir_fd=here())
                comps = target.split("/")
                if target.startswith("/"):
                    if len(comps) < 2 or comps[1] != CONTAINER_ROOT.strip("/"):
                        return None
                    reset()
                    comps = comps[2:]
                pending.extendleft(reversed(comps))
            elif pending:
                if not stat.S_ISDIR(info.st_mode) or len(chain) >= MAX_DEPTH:
                    return None
                chain.append(os.open(name, _PATH | os.O_DIRECTORY, dir_fd=here()))
            else:
                break  # the end of the path: whatever it is, the caller decides
            while pending and pending[0] in ("", ".", ".."):
                if pending.popleft() == "..":
                    if not chain:
                        return None
                    os.close(chain.pop())
            if not pending:
                return None  # names a directory (".", "..", a trailing "/")
            name = pending.popleft()
        result = os.dup(here()) if chain else os.open(".", _PATH | os.O_DIRECTORY, dir_fd=root_fd)
        return result, name
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENAMETOOLONG):
            return None
        raise
    finally:
        reset()


Warn = Callable[[str], None]


@dataclass
class _Frame:
    """One open directory of the walk and where its sorted reading stands."""

    fd: int
    parts: tuple[str, ...]
    after: str | None = None  # the last name handled
    chunk: list[str] = field(default_factory=list)  # the next names, largest first


def _next_chunk(fd: int, after: str | None) -> list[str]:
    with os.scandir(fd) as entries:  # closing rewinds the offset for the next scan
        names = (e.name for e in entries if after is None or e.name > after)
        return heapq.nsmallest(CHUNK, names)[::-1]


@dataclass
class _Collector:
    root_fd: int
    limits: ArtifactLimits
    warn: Warn
    deadline: float
    records: list[ArtifactRecord] = field(default_factory=list)
    total: int = 0
    warnings: int = 0

    @property
    def full(self) -> bool:
        return len(self.records) >= self.limits.max_files

    def note(self, text: str) -> None:
        self.warnings += 1
        if self.warnings <= MAX_WARNINGS:
            self.warn(text)

    def walk(self) -> None:
        stack = [_Frame(os.dup(self.root_fd), ())]
        try:
            while stack:
                if self.past_deadline():
                    self.warn(
                        f"removing what is over the limits stopped after {COLLECT_SECONDS:.0f} s;"
                        " the rest goes with the job's directory"
                    )
                    break
                frame = stack[-1]
                if self.full:
                    if not self.drain(frame):
                        continue  # out of time: the check above ends the walk
                elif not frame.chunk:
                    frame.chunk = _next_chunk(frame.fd, frame.after)
                if not frame.chunk:
                    os.close(stack.pop().fd)
                    continue
                name = frame.chunk.pop()
                frame.after = name
                child = self.entry(frame, name)
                if child is not None:
                    stack.append(child)
        finally:
            for frame in stack:
                os.close(frame.fd)
        if self.warnings > MAX_WARNINGS:
            self.warn(f"{self.warnings - MAX_WARNINGS} more artifact warnings not shown")

    def past_deadline(self) -> bool:
        """True once the time is up and the records are settled (only removal is left);
        raises artifact_copy_timeout if it is up before that."""
        if time.monotonic() <= self.deadline:
            return False
        if not self.full:
            raise ArtifactCollectionError(COPY_TIMEOUT, f"not done after {COLLECT_SECONDS:.0f} s")
        return True

    def drain(self, frame: _Frame) -> bool:
        """Nothing more can be kept: remove what this directory has left, in any order.
        False if the deadline stopped it."""
        frame.chunk = []
        while not self.past_deadline():
            with os.scandir(frame.fd) as entries:
                names = (e.name for e in entries if frame.after is None or e.name > frame.after)
                rest = list(itertools.islice(names, CHUNK))
            if not rest:
                return True
            for name in rest:
                self.skip(frame, name, f"more than {self.limits.max_files} files")
        return False

    def entry(self, frame: _Frame, name: str) -> _Frame | None:
        path = "/".join((*frame.parts, name))
        if not is_utf8(name):
            self.skip(frame, name, "name is not valid UTF-8")
            return None
        problem = component_problem(name)
        if problem:
            self.skip(frame, name, problem)
            return None
        info = os.stat(name, dir_fd=frame.fd, follow_symlinks=False)
        if stat.S_ISLNK(info.st_mode):
            self.symlink(frame, name)
        elif stat.S_ISDIR(info.st_mode):
            if len(frame.parts) >= MAX_DEPTH:
                self.skip(frame, name, f"deeper than {MAX_DEPTH} directory levels")
                return None
            if name.startswith("."):
                self.note(f"artifact {shown(path)} has a leading '.' (kept)")
            # The job may have left a directory unreadable; it is ours (same uid), so
            # open it up for us alone (downloads go through the API). One owned by someone
            # else raises PermissionError.
            return _Frame(open_dir(name, frame.fd, mode=0o700), (*frame.parts, name))
        elif stat.S_ISREG(info.st_mode):
            self.regular(frame, name)
        else:
            self.skip(frame, name, "not a regular file or directory")
        return None

    def symlink(self, frame: _Frame, name: str) -> None:
        resolved = resolve_in_tree(self.root_fd, (*frame.parts, name))
        if resolved is None:
            self.skip(frame, name, f"symlink dangles, loops or resolves outside {CONTAINER_ROOT}")
            return
        target_dir, target = resolved
        try:
            info = os.stat(target, dir_fd=target_dir, follow_symlinks=False)
            if not stat.S_ISREG(info.st_mode):
                self.skip(frame, name, "symlink to something other than a file")
                return
            # Replace the link by a hard link to its target: a plain file, no extra space.
            remove_entry(_LINK_SCRATCH, frame.fd)
            try:
                os.link(
                    target,
                    _LINK_SCRATCH,
                    src_dir_fd=target_dir,
                    dst_dir_fd=frame.fd,
                    follow_symlinks=False,
                )
            except OSError as exc:
                # e.g. EPERM: fs.protected_hardlinks and a target owned by another uid.
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise
                self.skip(frame, name, f"cannot become a plain file ({exc.strerror})")
                return
            os.replace(_LINK_SCRATCH, name, src_dir_fd=frame.fd, dst_dir_fd=frame.fd)
        finally:
            os.close(target_dir)
        self.regular(frame, name)

    def regular(self, frame: _Frame, name: str) -> None:
        path = "/".join((*frame.parts, name))
        info = os.stat(name, dir_fd=frame.fd, follow_symlinks=False)
        size = info.st_size
        if name.startswith("."):
            self.note(f"artifact {shown(path)} has a leading '.' (kept)")
        if size > self.limits.max_file_bytes:
            self.skip(frame, name, f"larger than {self.limits.max_file_bytes} bytes")
        elif self.full:
            self.skip(frame, name, f"more than {self.limits.max_files} files")
        elif self.total + size > self.limits.max_total_bytes:
            self.skip(frame, name, f"job total over {self.limits.max_total_bytes} bytes")
        else:
            chmod_entry(name, frame.fd, 0o600)
            self.total += size
            created = datetime.fromtimestamp(info.st_mtime, UTC)
            self.records.append(ArtifactRecord(path, size, created))

    def skip(self, frame: _Frame, name: str, why: str) -> None:
        self.note(f"artifact {shown('/'.join((*frame.parts, name)))} skipped: {why}")
        remove_entry(name, frame.fd)


def _copy_out(root_fd: int, dest_fd: int, record: ArtifactRecord) -> None:
    """Copy one kept file (its path settled by the walk; nothing writes the tree any more)
    to the same path below dest_fd: directories 0700, the file 0600, its mtime kept."""
    *dirs, name = record.name.split("/")
    src_dir, dst_dir = os.dup(root_fd), os.dup(dest_fd)
    try:
        for part in dirs:
            src_next = os.open(part, _DIR, dir_fd=src_dir)
            os.close(src_dir)
            src_dir = src_next
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o700, dir_fd=dst_dir)
            dst_next = os.open(part, _DIR, dir_fd=dst_dir)
            os.close(dst_dir)
            dst_dir = dst_next
        src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src_dir)
        try:
            dst = os.open(
                name,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=dst_dir,
            )
            try:
                info = os.fstat(src)
                offset = 0
                while offset < info.st_size:
                    sent = os.sendfile(dst, src, offset, min(info.st_size - offset, 1 << 30))
                    if sent == 0:  # cannot shrink (nobody writes it), but never spin
                        break
                    offset += sent
                os.utime(dst, ns=(info.st_atime_ns, info.st_mtime_ns))
            finally:
                os.close(dst)
        finally:
            os.close(src)
    finally:
        os.close(src_dir)
        os.close(dst_dir)


_ERRNO_CODES = {
    errno.ENOSPC: "artifact_copy_disk_full",
    errno.EDQUOT: "artifact_copy_disk_full",
    errno.EFBIG: "artifact_copy_disk_full",
    errno.ENOENT: "artifact_copy_container_gone",
    errno.EACCES: "artifact_copy_permission",
    errno.EPERM: "artifact_copy_permission",
}


def collect_artifacts(
    source_fd: int,
    dest: Path,
    limits: ArtifactLimits,
    warn: Warn,
    seconds: float = COLLECT_SECONDS,
) -> list[ArtifactRecord]:
    """Apply the rules to the job's ended /artifacts (source_fd: a descriptor of it, as
    artifactpin gives) in place and copy what stays to `dest` (whatever it held before
    goes); returns what stays.

    Raises ArtifactCollectionError for the documented failures; any other error (a bug, EIO)
    propagates and the supervisor ends the job `job_finish_failed`."""
    deadline = time.monotonic() + seconds
    try:
        # The job may have left its /artifacts unreadable (`chmod 000`): it is ours.
        root_fd = open_up(source_fd, mode=0o700)
        try:
            collector = _Collector(root_fd, limits, warn, deadline)
            collector.walk()
            dest_fd = open_dir(str(dest), None, mode=0o700)
            try:
                # A collection cut short (the API stopped) is redone from the start. The
                # copy needs no deadline: the limits bound it (max_files, max_total_bytes).
                for name in os.listdir(dest_fd):
                    remove_entry(name, dest_fd)
                for record in collector.records:
                    _copy_out(root_fd, dest_fd, record)
            finally:
                os.close(dest_fd)
        finally:
            os.close(root_fd)
    except OSError as exc:
        code = _ERRNO_CODES.get(exc.errno or 0)
        if code is None:
            raise
        raise ArtifactCollectionError(code, os.strerror(exc.errno or 0)) from exc
    return collector.records
