"""conmon record parsing, line assembly, truncation and resume of the job log."""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from flashpods.api.logs import TRUNCATED_RE
from flashpods.api.runtime import joblog, logcapture
from flashpods.api.runtime.joblog import format_size
from flashpods.api.runtime.logcapture import (
    MAX_LINE_BYTES,
    CaptureState,
    LineAssembler,
    LogCapture,
    inspect_log,
    parse_conmon_time,
)
from flashpods.common.polling import wait_until
from flashpods.common.timefmt import utc_now
from flashpods_testing.leftover_processes import names_a_path_under, processes
from hypothesis import given
from hypothesis import strategies as st

T = "2026-11-25T21:34:32.579366452+00:00"


def test_conmon_time_keeps_microseconds() -> None:
    moment = parse_conmon_time(T.encode())
    assert moment == datetime(2026, 11, 25, 21, 34, 32, 579366, tzinfo=UTC)
    assert parse_conmon_time(b"2026-11-25T21:34:32Z").second == 32


def test_partial_records_join_per_stream() -> None:
    asm = LineAssembler()
    assert asm.feed(f"{T} stdout P hel".encode()) == []
    stderr = asm.feed(f"{T} stderr F oops".encode())
    assert [line for _, _, line in stderr] == [b"oops"]
    done = asm.feed(b"2026-11-25T21:34:33.000000000+00:00 stdout F lo")
    assert done == [(T.encode(), b"[21:34:32.579] ", b"hello")]  # the time the line began
    assert asm.feed(f"{T} stdout F ".encode())[0][2] == b""  # an empty line stays a line


def test_unterminated_lines_flush_at_the_end_and_long_lines_are_cut() -> None:
    asm = LineAssembler()
    asm.feed(f"{T} stdout P no newline".encode())
    assert [line for _, _, line in asm.flush()] == [b"no newline"]
    big = b"x" * (MAX_LINE_BYTES + 10)
    out = asm.feed(f"{T} stdout P ".encode() + big)
    assert [len(line) for _, _, line in out] == [MAX_LINE_BYTES]
    assert [len(line) for _, _, line in asm.flush()] == [10]
    out = asm.feed(f"{T} stdout F ".encode() + big)  # a whole line that is too long
    assert [len(line) for _, _, line in out] == [MAX_LINE_BYTES, 10]


def test_prefixes_follow_the_stamp_to_the_millisecond_whatever_its_length() -> None:
    asm = LineAssembler()
    stamps = [
        b"2026-11-25T21:34:32.579366452+00:00",
        b"2026-11-25T21:34:32.5+00:00",  # conmon trims trailing zeros
        b"2026-11-25T21:34:32Z",
        b"2026-11-25T23:34:32.579+02:00",
        b"2026-11-25T21:34:32.5799Z",
    ]
    assert [asm.prefix(s) for s in stamps] == [
        b"[21:34:32.579] ",
        b"[21:34:32.500] ",
        b"[21:34:32.000] ",
        b"[21:34:32.579] ",
        b"[21:34:32.579] ",
    ]


def test_garbage_records_are_ignored() -> None:
    asm = LineAssembler()
    assert asm.feed(b"") == []
    assert asm.feed(b"not a time stdout F x") == []


def test_records_split_across_reads() -> None:
    state = CaptureState(1 << 20)
    assert state.feed(f"{T} stdout F o".encode()) == b""
    assert state.feed(b"ne\n" + f"{T} stdout F tw".encode()) == b"[21:34:32.579] one\n"
    assert state.feed(b"o\n") == b"[21:34:32.579] two\n"


def test_the_log_never_exceeds_its_limit_marker_included() -> None:
    for limit in (1024, 1500, 4096):
        state = CaptureState(limit)
        out = state.feed(_raw([f"stdout F {'x' * (i % 37)}" for i in range(400)]))
        assert state.full
        assert len(out) <= limit
        assert out.endswith(joblog.marker_text(limit) + b"\n")


def test_runtime_lines_obey_the_same_limit(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    limit = 1024
    assert joblog.append_runtime_lines(log, limit, ["first"]) == 1
    stored = joblog.append_runtime_lines(log, limit, (f"warning: file {i}" for i in range(100)))
    data = log.read_bytes()
    assert 0 < stored < 100
    assert len(data) <= limit
    assert joblog.ends_with_marker(log, limit)
    assert data.count(joblog.marker_text(limit)) == 1
    assert joblog.append_runtime_lines(log, limit, ["after the marker"]) == 0
    assert log.read_bytes() == data


def test_size_text() -> None:
    assert format_size(50 << 20) == "50 MB"
    assert format_size(64 << 10) == "64 KB"
    assert format_size(1000) == "1000 bytes"
    assert format_size(2 << 30) == "2 GB"


def test_inspect_log_cuts_a_torn_line_and_sees_the_marker(tmp_path: Path) -> None:
    log = tmp_path / "j.log"
    log.write_bytes(b"[00:00:00.000] a\n[00:00:00.001] b\n[00:00:00.0")
    state = inspect_log(log, 1 << 20)
    assert (state.lines, state.truncated) == (2, False)
    assert log.read_bytes().endswith(b"b\n")
    log.write_bytes(b"[00:00:00.000] a\n[00:00:01.000] [TRUNCATED - log exceeded 1 MB limit]\n")
    assert inspect_log(log, 1 << 20).truncated
    assert inspect_log(tmp_path / "missing.log", 1024).lines == 0


def _raw(lines: list[str]) -> bytes:
    return "".join(f"{T} {line}\n" for line in lines).encode()


def run_capture(raw: Path, log: Path, limit: int) -> LogCapture:
    capture = LogCapture(raw, log, limit)
    capture.start()
    capture.finish(10)
    return capture


def test_capture_writes_prefixed_lines_and_resumes_without_duplicates(tmp_path: Path) -> None:
    raw, log = tmp_path / "raw", tmp_path / "job.log"
    raw.write_bytes(_raw(["stdout F one", "stderr F two"]))
    run_capture(raw, log, 1 << 20)
    assert log.read_text() == "[21:34:32.579] one\n[21:34:32.579] two\n"
    # conmon wrote more while the API was down; a new capture appends only the new lines.
    with raw.open("ab") as fh:
        fh.write(_raw(["stdout P thr", "stdout F ee"]))
    run_capture(raw, log, 1 << 20)
    assert log.read_text().splitlines()[-1] == "[21:34:32.579] three"
    assert len(log.read_text().splitlines()) == 3


def test_capture_stops_at_the_limit_with_one_marker(tmp_path: Path) -> None:
    raw, log = tmp_path / "raw", tmp_path / "job.log"
    raw.write_bytes(_raw([f"stdout F line {i:04d}" for i in range(500)]))
    run_capture(raw, log, 1024)
    text = log.read_text().splitlines()
    assert text[-1].endswith("[TRUNCATED - log exceeded 1 KB limit]")
    assert log.stat().st_size <= 1024
    run_capture(raw, log, 1024)  # a resume after truncation adds nothing
    assert log.read_text().splitlines() == text


def test_capture_follows_a_rotated_file(tmp_path: Path) -> None:
    raw, log = tmp_path / "raw", tmp_path / "job.log"
    raw.write_bytes(_raw(["stdout F before"]))
    capture = LogCapture(raw, log, 1 << 20)
    capture.start()
    wait_until(lambda: log.exists() and b"before" in log.read_bytes(), 20, "first line captured")
    rotated = tmp_path / "raw.tmp"
    rotated.write_bytes(_raw(["stdout F after"]))
    rotated.replace(raw)  # what conmon does past max-size
    capture.finish(10)
    assert [line[15:] for line in log.read_text().splitlines()] == ["before", "after"]


def test_a_write_to_the_raw_log_wakes_capture_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Woken by inotify, not by its fallback timer (made a minute long here)."""
    monkeypatch.setattr(logcapture, "POLL_SECONDS", 60.0)
    raw, log = tmp_path / "raw", tmp_path / "job.log"
    raw.write_bytes(_raw(["stdout F one"]))
    control_read, control_write = os.pipe()
    capture = threading.Thread(
        target=logcapture.follow, args=(raw, log, 1 << 20, control_read), daemon=True
    )
    capture.start()
    try:
        wait_until(lambda: log.exists() and b"one" in log.read_bytes(), 10, "first line")
        with raw.open("ab") as fh:
            fh.write(_raw(["stdout F two"]))
        wait_until(lambda: b"two" in log.read_bytes(), 10, "the line written later")
    finally:
        os.write(control_write, logcapture.ENDED)
        capture.join(10)
        os.close(control_write)
        os.close(control_read)
    assert not capture.is_alive()


def test_an_unreadable_rotated_file_ends_capture_saying_so(tmp_path: Path) -> None:
    raw, log = tmp_path / "raw", tmp_path / "job.log"
    raw.write_bytes(_raw(["stdout F before"]))
    capture = LogCapture(raw, log, 1 << 20)
    capture.start()
    wait_until(lambda: log.exists() and b"before" in log.read_bytes(), 20, "first line captured")
    rotated = tmp_path / "raw.tmp"
    rotated.write_bytes(_raw(["stdout F secret"]))
    rotated.chmod(0)
    rotated.replace(raw)
    if os.access(raw, os.R_OK):  # root reads anything: make the open fail another way
        raw.unlink()
        raw.mkdir()
    capture.finish(10)
    lines = log.read_text().splitlines()
    assert lines[0][15:] == "before"
    # Not "exceeded the limit": nothing was too big, the rest could not be read.
    assert lines[-1][15:] == "[TRUNCATED - output unreadable]"
    assert "secret" not in log.read_text()
    # Final like a full log: a resumed capture adds nothing.
    assert inspect_log(log, 1 << 20).truncated


def test_an_abandoned_capture_stops_and_a_resume_continues_exactly(tmp_path: Path) -> None:
    raw, log = tmp_path / "raw", tmp_path / "job.log"
    raw.write_bytes(_raw(["stdout F one", "stdout P tw"]))
    capture = LogCapture(raw, log, 1 << 20)
    capture.start()
    wait_until(lambda: log.exists() and b"one" in log.read_bytes(), 20, "first line captured")
    capture.abandon()  # the API stops (or dies: its end of the pipe closes just the same)
    assert capture._process is not None and capture._process.returncode == 0
    with raw.open("ab") as fh:
        fh.write(_raw(["stdout F o", "stderr F three"]))
    run_capture(raw, log, 1 << 20)
    assert [line[15:] for line in log.read_text().splitlines()] == ["one", "two", "three"]


def test_the_unreadable_marker_fits_the_room_kept_for_the_size_marker() -> None:
    smallest = joblog.marker_reserve(1024)  # FLASHPODS_LOG_MAX_BYTES is at least 1 KiB
    assert len(joblog.unreadable_line(utc_now())) <= smallest
    assert TRUNCATED_RE.search("[00:00:00.000] [TRUNCATED - output unreadable]")
    assert TRUNCATED_RE.search("[00:00:00.000] [TRUNCATED - log exceeded 1 KB limit]")


@given(
    st.lists(
        st.tuples(
            st.sampled_from([b"stdout", b"stderr"]),
            st.sampled_from([b"F", b"P"]),
            st.sampled_from([b"", b"y", b"x" * 300, b"z" * (MAX_LINE_BYTES + 5)]),
            st.sampled_from([T.encode(), b"2026-11-25T21:34:32.5Z", b"2026-11-25T21:34:33Z"]),
        ),
        max_size=30,
    ),
    st.integers(min_value=1, max_value=7),
)
def test_the_short_path_writes_what_the_assembler_would(records, pieces) -> None:
    raw = b"".join(
        b"%s %s %s %s\n" % (stamp, stream, flag, text) for stream, flag, text, stamp in records
    )
    reference = LineAssembler()
    expected = b"".join(
        prefix + content + b"\n"
        for stream, flag, text, stamp in records
        for _, prefix, content in reference.feed(b"%s %s %s %s" % (stamp, stream, flag, text))
    )
    state = CaptureState(1 << 30)
    step = max(1, len(raw) // pieces)
    got = b"".join(state.feed(raw[i : i + step]) for i in range(0, len(raw), step))
    assert got == expected


def test_a_capture_stopped_before_it_started_never_starts(tmp_path: Path) -> None:
    # A shutdown that abandons a job whose supervisor has not started its capture yet.
    for stop in (LogCapture.abandon, LogCapture.finish):
        capture = LogCapture(tmp_path / ".job_1.ctr.log", tmp_path / "job_1.log", 1 << 20)
        stop(capture)
        capture.start()
        assert [p for p in processes() if names_a_path_under(p, tmp_path)] == []


def test_a_capture_started_early_is_not_started_again(tmp_path: Path) -> None:
    # The runtime starts it before podman creates the container; the supervisor asks again.
    raw, log = tmp_path / ".job_1.ctr.log", tmp_path / "job_1.log"
    raw.write_bytes(_raw(["stdout F once"]))
    capture = LogCapture(raw, log, 1 << 20)
    capture.start()
    capture.start()
    assert len([p for p in processes() if names_a_path_under(p, tmp_path)]) == 1
    capture.finish(10)
    assert log.read_text() == "[21:34:32.579] once\n"
