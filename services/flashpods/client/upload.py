"""The rsync half of an upload: copy a local folder to rsync://HOST/uploads/{id}/.

The API half (create, finalize) lives in the SDK; this module only runs rsync, reads its
transfer statistics and turns its failures into FlashpodsError codes. The directory may
already hold an earlier upload's tree (a base, POST /uploads): `--delete` and
`--delete-excluded` make it exactly the folder minus the excludes whatever it started
as, and rsync's quick check (size and mtime) skips what is already there.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flashpods.client.errors import FlashpodsError
from flashpods.common.programs import ProgramFailure, run_program
from flashpods.common.uploadlimits import MARKER, TOO_MANY_ENTRIES, parse_cut

DEFAULT_EXCLUDES = (".git", "node_modules", "target", "__pycache__", ".venv")
# An agent's /work keeps its repository: the agent works on a branch of it and pushes
# that branch to the repository's own `origin`.
AGENT_EXCLUDES = tuple(p for p in DEFAULT_EXCLUDES if p != ".git")
# Left in an upload by the host when it cut the transfer at a per-upload limit
# (flashpods.common.uploadlimits): JSON {"limit_bytes", "measured_bytes"} or
# {"limit_entries", "measured_entries"}.
CUT_MARKER = MARKER
UPLOAD_ID_RE = re.compile(r"^upload_[A-Za-z0-9_-]{1,64}$")
# rsync --info=progress2 lines: "   1,234,567  42%   1.23MB/s    0:00:01 (xfr#3, to-chk=0/5)"
_PROGRESS_RE = re.compile(r"^\s*([\d,]+)\s+(\d+)%\s+(\S+)")
# --stats lines: "Total bytes sent: 421,017", "Literal data: 419,420 bytes"
_STATS_RE = re.compile(r"^(Total bytes sent|Literal data|Total file size): ([\d,]+)", re.M)


@dataclass(frozen=True)
class TransferStats:
    """What rsync reported for one upload."""

    sent_bytes: int  # everything this side sent: file list, file data, protocol
    literal_bytes: int  # file data sent as is (not matched against the host's copy)
    total_bytes: int  # size of the files in the upload


def new_upload_id() -> str:
    return f"upload_{secrets.token_hex(16)}"


def rsync_command(
    source: Path, rsync_url: str, upload_id: str, excludes: Sequence[str], progress: bool
) -> list[str]:
    """Pure: the argv. The trailing slash on the source copies its contents, not the folder."""
    if not UPLOAD_ID_RE.match(upload_id):
        raise FlashpodsError("invalid_upload_id", f"not a valid upload id: {upload_id!r}")
    # --modify-window=-1: the quick check compares nanoseconds, not whole seconds; an agent
    # that rewrites a file (same size) in the second of its last upload must not have the
    # host keep the base snapshot's stale copy.
    argv = ["rsync", "-a", "--delete", "--delete-excluded", "--modify-window=-1"]
    argv += ["--stats", "--timeout=300"]
    if progress:
        argv += ["--info=progress2", "--no-inc-recursive"]
    argv += [f"--exclude={pattern}" for pattern in excludes]
    argv += [f"{source}/", f"{rsync_url}/{upload_id}/"]
    return argv


def parse_progress(line: str) -> tuple[int, int] | None:
    """(bytes transferred, percent) from one progress2 line, or None."""
    m = _PROGRESS_RE.match(line)
    if not m:
        return None
    return int(m.group(1).replace(",", "")), int(m.group(2))


def parse_stats(text: str) -> TransferStats | None:
    """Pure: the --stats numbers in rsync's output, or None if they are not all there."""
    found = {name: int(value.replace(",", "")) for name, value in _STATS_RE.findall(text)}
    if len(found) != 3:
        return None
    return TransferStats(found["Total bytes sent"], found["Literal data"], found["Total file size"])


def classify_failure(
    returncode: int, stderr: str, cut: dict[str, Any] | None = None
) -> FlashpodsError:
    """Pure: the error for a failed rsync run; `cut` is the host's CUT_MARKER, if any."""
    tail = stderr.strip()[-2000:]
    reason = parse_cut(cut)
    if reason is not None and reason.unit == "entries":
        return FlashpodsError(
            TOO_MANY_ENTRIES,
            f"the upload has more entries (files, directories, links) than the host's "
            f"per-upload limit of {reason.limit}; rsync was stopped while it wrote. "
            "Upload fewer (see --exclude)",
            details={"cut": cut, "rsync_exit": returncode, "rsync_stderr": tail},
        )
    if cut is not None or "File too large" in stderr:
        # The host cut the transfer (the upload's total) or refused one file (RLIMIT_FSIZE,
        # the same limit): either way the upload is over the per-upload limit.
        limit = reason.limit if reason is not None else None
        return FlashpodsError(
            "upload_too_large",
            "the upload is over the host's per-upload limit"
            + (f" of {limit} bytes" if limit is not None else "")
            + "; rsync was stopped while it wrote. Upload less (see --exclude)",
            details={
                **({} if cut is None else {"cut": cut}),
                "rsync_exit": returncode,
                "rsync_stderr": tail,
            },
        )
    if "No space left" in stderr:
        return FlashpodsError(
            "upload_disk_full",
            "the Flashpods host has no space left for this upload; free space "
            "(finished jobs' artifacts expire after 1 h) or upload less (see --exclude)",
            details={"rsync_exit": returncode, "rsync_stderr": tail},
        )
    return FlashpodsError(
        "upload_failed",
        f"rsync exited with {returncode}: {tail.splitlines()[-1] if tail else 'no message'}",
        details={"rsync_exit": returncode, "rsync_stderr": tail},
    )


def check_source(source: Path) -> None:
    if not source.is_dir():
        raise FlashpodsError("invalid_upload_source", f"not a directory: {source}")


def run_rsync(
    source: Path,
    rsync_url: str,
    upload_id: str,
    excludes: Sequence[str] = DEFAULT_EXCLUDES,
    on_progress: Callable[[int, int], None] | None = None,
) -> TransferStats | None:
    """Run rsync; its statistics, or None if it printed none we could read."""
    check_source(source)
    if shutil.which("rsync") is None:
        raise FlashpodsError("upload_failed", "rsync is not installed on this machine")
    argv = rsync_command(source, rsync_url, upload_id, excludes, on_progress is not None)
    # stderr goes to a file so a chatty rsync can never block on a full pipe.
    with tempfile.TemporaryFile() as errfile:
        with subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=errfile, stdin=subprocess.DEVNULL
        ) as proc:
            assert proc.stdout is not None
            stdout = _pump_output(proc.stdout.fileno(), on_progress)
            returncode = proc.wait()
        errfile.seek(0)
        stderr = errfile.read().decode(errors="replace")
    if returncode != 0:
        raise classify_failure(returncode, stderr, read_cut_marker(rsync_url, upload_id))
    return parse_stats(stdout)


class _NoMarker(Exception):
    pass


def _no_marker(failure: ProgramFailure) -> _NoMarker:
    return _NoMarker(failure.reason)


def read_cut_marker(rsync_url: str, upload_id: str) -> dict[str, Any] | None:
    """The host's CUT_MARKER in the upload (fetched over rsync), None if there is none.
    Asked only after rsync failed: the host's watcher writes it before it ends the
    transfer, so a cut upload always has it."""
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["rsync", "-q", "--timeout=30", f"{rsync_url}/{upload_id}/{CUT_MARKER}", f"{tmp}/"]
        try:
            fetch = run_program(argv, fail=_no_marker, check=False, timeout=60)
        except _NoMarker:  # rsync missing or hung: no word from the host either
            return None
        if fetch.returncode != 0:
            return None
        try:
            cut = json.loads((Path(tmp) / CUT_MARKER).read_bytes())
        except (OSError, ValueError):
            return None
    return cut if isinstance(cut, dict) else None


def _pump_output(fd: int, on_progress: Callable[[int, int], None] | None) -> str:
    """progress2 rewrites one line with \\r; report each rewrite as it arrives. Returns
    the lines that were not progress (the statistics)."""
    buf = b""
    rest: list[str] = []
    while chunk := os.read(fd, 4096):
        buf += chunk
        *lines, buf = re.split(rb"[\r\n]", buf)
        for raw in lines:
            line = raw.decode(errors="replace")
            parsed = parse_progress(line)
            if parsed is None:
                rest.append(line)
            elif on_progress is not None:
                on_progress(*parsed)
    rest.append(buf.decode(errors="replace"))
    return "\n".join(rest)
