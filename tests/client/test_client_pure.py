"""Pure pieces: retry arithmetic, Retry-After parsing, rsync argv and failure mapping,
log following, CLI exit codes and command quoting."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from flashpods.client.cli import job_exit_code, worker_command
from flashpods.client.errors import FlashpodsError
from flashpods.client.models import Job
from flashpods.client.retry import RetryPolicy, parse_retry_after
from flashpods.client.sdk import _utf8_prefix
from flashpods.client.upload import (
    DEFAULT_EXCLUDES,
    TransferStats,
    classify_failure,
    parse_progress,
    parse_stats,
    read_cut_marker,
    rsync_command,
)


def test_backoff_doubles_from_one_second_up_to_the_cap() -> None:
    policy = RetryPolicy()
    assert [policy.backoff(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def test_throttled_answers_get_five_tries_in_all() -> None:
    policy = RetryPolicy()
    assert [policy.throttled_delay(n, None) for n in range(1, 6)] == [1, 2, 4, 8, None]


def test_retry_after_wins_over_backoff_but_not_over_the_cap() -> None:
    policy = RetryPolicy()
    assert policy.throttled_delay(1, 7.0) == 7.0
    assert policy.throttled_delay(3, 0.0) == 0.0
    assert policy.throttled_delay(1, 3600.0) == 30.0
    assert policy.throttled_delay(5, 1.0) is None


def test_network_errors_get_three_tries_in_all() -> None:
    policy = RetryPolicy()
    assert [policy.network_delay(n) for n in range(1, 4)] == [1, 2, None]


def test_retry_after_parses_seconds_and_http_dates() -> None:
    now = datetime(2026, 1, 21, 10, 30, 0, tzinfo=UTC)
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after("Wed, 21 Jan 2026 10:30:12 GMT", now) == 12.0
    assert parse_retry_after("Wed, 21 Jan 2026 10:29:00 GMT", now) == 0.0
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None


def test_rsync_argv_copies_contents_with_delete_and_excludes() -> None:
    argv = rsync_command(
        Path("/src"), "rsync://10.0.0.1/uploads", "upload_ab", DEFAULT_EXCLUDES, False
    )
    assert argv[:3] == ["rsync", "-a", "--delete"]
    # The directory may start as an earlier upload's tree: what is excluded now goes too.
    assert "--delete-excluded" in argv and "--stats" in argv
    assert "--modify-window=-1" in argv  # a rewrite within the same second is seen
    assert [a for a in argv if a.startswith("--exclude=")] == [
        "--exclude=.git",
        "--exclude=node_modules",
        "--exclude=target",
        "--exclude=__pycache__",
        "--exclude=.venv",
    ]
    assert argv[-2:] == ["/src/", "rsync://10.0.0.1/uploads/upload_ab/"]
    assert "--info=progress2" in rsync_command(
        Path("/s"), "rsync://h/uploads", "upload_x", (), True
    )


@pytest.mark.parametrize(
    "bad", ["upload_", "upload_../x", "job_1", "upload_a/b", "upload_" + "a" * 65]
)
def test_rsync_refuses_upload_ids_the_api_would_refuse(bad: str) -> None:
    with pytest.raises(FlashpodsError) as err:
        rsync_command(Path("/s"), "rsync://h/uploads", bad, (), False)
    assert err.value.code == "invalid_upload_id"


def test_rsync_failures_are_classified() -> None:
    full = classify_failure(11, 'rsync: write failed on "x": No space left on device (28)\n')
    assert (full.code, full.status, full.details["rsync_exit"]) == ("upload_disk_full", None, 11)
    other = classify_failure(10, "rsync: failed to connect to 10.0.0.1: Connection refused (111)\n")
    assert other.code == "upload_failed"
    assert "Connection refused" in other.message


def test_an_upload_cut_at_the_limit_is_upload_too_large() -> None:
    """The host's marker (the upload's total) or rsync's EFBIG (one file, RLIMIT_FSIZE)."""
    closed = "rsync: connection unexpectedly closed (3807 bytes received so far) [sender]\n"
    cut = classify_failure(12, closed, {"limit_bytes": 2147483648, "measured_bytes": 2150000000})
    assert (cut.code, cut.status) == ("upload_too_large", None)
    assert "limit of 2147483648 bytes" in cut.message
    assert cut.details["cut"] == {"limit_bytes": 2147483648, "measured_bytes": 2150000000}
    assert cut.details["rsync_exit"] == 12
    one_file = classify_failure(11, 'rsync: write failed on "/big.bin": File too large (27)\n')
    assert (one_file.code, "cut" in one_file.details) == ("upload_too_large", False)
    assert classify_failure(12, closed).code == "upload_failed"  # no marker: not ours to say


def test_an_upload_cut_at_the_entry_limit_is_upload_too_many_entries() -> None:
    """The code finalize answers for the same limit (507), here with status None."""
    closed = "rsync: connection unexpectedly closed (3807 bytes received so far) [sender]\n"
    marker = {"limit_entries": 500000, "measured_entries": 500321}
    cut = classify_failure(12, closed, marker)
    assert (cut.code, cut.status) == ("upload_too_many_entries", None)
    assert "limit of 500000" in cut.message
    assert cut.details["cut"] == marker


def test_progress2_lines_parse() -> None:
    assert parse_progress("    1,234,567  42%    1.18MB/s    0:00:01 (xfr#3, to-chk=0/5)") == (
        1234567,
        42,
    )
    assert parse_progress("sending incremental file list") is None


def test_utf8_prefix_never_cuts_a_character() -> None:
    text = "aé€😀".encode()  # 1, 2, 3 and 4 bytes
    for cut in range(len(text) + 1):
        kept = _utf8_prefix(text[:cut])
        assert text.startswith(kept)
        kept.decode("utf-8")  # whole characters only
        assert cut - len(kept) < 4
    assert _utf8_prefix(text) == text
    assert _utf8_prefix(b"\xff\xfe") == b"\xff\xfe"  # not UTF-8: left as it is


def _job(status: str, exit_code: int | None) -> Job:
    return Job("job_1", "worker", status, exit_code, None, {})


def test_run_exit_code_follows_the_job() -> None:
    assert job_exit_code(_job("completed", 0)) == 0
    assert job_exit_code(_job("failed", 3)) == 3
    assert job_exit_code(_job("failed", 137)) == 137
    assert job_exit_code(_job("timed_out", 137)) == 137
    assert job_exit_code(_job("timed_out", None)) == 124
    assert job_exit_code(_job("cancelled", None)) == 130
    assert job_exit_code(_job("failed", None)) == 125  # container could not start
    assert job_exit_code(_job("failed", 256 + 2)) == 2


def test_worker_command_keeps_shell_text_and_quotes_argv() -> None:
    assert worker_command(["make test && ls"]) == "make test && ls"
    assert worker_command(["echo", "a b", "$HOME"]) == "echo 'a b' '$HOME'"


# rsync 3.2/3.5 --stats, thousands separated (its default).
STATS = """
Number of files: 5,251 (reg: 5,000, dir: 251)
Number of created files: 0
Number of deleted files: 0
Number of regular files transferred: 1
Total file size: 104,857,600 bytes
Total transferred file size: 1,048,576 bytes
Literal data: 1,048,576 bytes
Matched data: 0 bytes
File list size: 98,304
Total bytes sent: 1,152,093
Total bytes received: 2,041

sent 1,152,093 bytes  received 2,041 bytes  1,234.00 bytes/sec
"""


def test_rsync_stats_parse() -> None:
    assert parse_stats(STATS) == TransferStats(1_152_093, 1_048_576, 104_857_600)
    assert parse_stats(STATS.replace("Literal data", "Literal")) is None
    assert parse_stats("") is None


def test_no_cut_marker_when_rsync_cannot_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no rsync: no word from the host, no crash
    assert read_cut_marker("rsync://10.0.0.1:873/uploads", "up_1") is None
