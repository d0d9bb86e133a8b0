"""Pure pieces: IDs, validators, artifact names, the state machine, admission, the rate
limiter, Range parsing and log tails, with hypothesis over their input spaces."""

from __future__ import annotations

import os
import socket
import string
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from flashpods.api import admission
from flashpods.api.artifacts import parse_range
from flashpods.api.http import FileShrankError, send_file
from flashpods.api.ids import (
    is_job_id,
    is_request_id,
    is_upload_id,
    new_job_id,
    normalize_client_job_id,
)
from flashpods.api.jobstate import TRANSITIONS, can_transition
from flashpods.api.logs import tail_file
from flashpods.api.ratelimit import RateLimiter
from flashpods.api.runtime import LOG_TRUNCATED_MARKER
from flashpods.api.validation import (
    LIMITS,
    is_valid_image,
    parse_job_request,
)
from flashpods.common.artifact_names import artifact_name_problem
from flashpods.common.errors import ServiceError
from flashpods.common.jobstates import ACTIVE, ENDED, STATES
from flashpods.common.numbers import parse_decimal
from hypothesis import assume, given, settings
from hypothesis import strategies as st

# --- IDs ---------------------------------------------------------------------------------


def test_job_ids_are_unique_and_well_formed() -> None:
    ids = {new_job_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(is_job_id(i) for i in ids)


@given(st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=1, max_size=64))
def test_upload_ids_accept_the_documented_alphabet(suffix: str) -> None:
    assert is_upload_id(f"upload_{suffix}")


@given(st.text(max_size=80))
def test_upload_ids_never_name_a_path_elsewhere(text: str) -> None:
    if is_upload_id(text):
        assert text.startswith("upload_") and "/" not in text and "." not in text
        assert "\x00" not in text and len(text) <= 71
        assert Path("/uploads", text).parent == Path("/uploads")


@pytest.mark.parametrize("bad", ["upload_", "upload_a/b", "upload_..", "upload_" + "a" * 65, "x_1"])
def test_upload_ids_rejected(bad: str) -> None:
    assert not is_upload_id(bad)


@given(st.uuids(version=4))
def test_client_job_id_accepts_v4_in_any_case(value: uuid.UUID) -> None:
    assert normalize_client_job_id(str(value).upper()) == str(value)
    assert normalize_client_job_id(str(value)) == str(value)


@given(st.one_of(st.uuids(version=1), st.uuids(version=3), st.text(max_size=40), st.integers()))
def test_client_job_id_rejects_everything_else(value: Any) -> None:
    if isinstance(value, uuid.UUID):
        assert normalize_client_job_id(str(value)) is None
    else:
        assume(not (isinstance(value, str) and len(value) == 36))
        assert normalize_client_job_id(value) is None


def test_request_ids() -> None:
    assert is_request_id(str(uuid.uuid4()))
    assert not is_request_id("x" * 36) and not is_request_id("<script>")


# --- job request validation --------------------------------------------------------------


@given(
    job_type=st.sampled_from(["worker", "agent"]),
    cpus=st.integers(min_value=1, max_value=10_000),
    memory=st.integers(min_value=1, max_value=10_000),
    timeout=st.integers(min_value=1, max_value=10_000),
    disk=st.integers(min_value=1, max_value=10_000),
)
def test_resources_are_clamped_to_the_type_maximum(
    job_type: str, cpus: int, memory: int, timeout: int, disk: int
) -> None:
    body = {
        "type": job_type,
        "command": "x",
        "task": "t",
        "git_branch": "main",
        "cpus": cpus,
        "memory_gb": memory,
        "timeout_minutes": timeout,
        "disk_gb": disk,
    }
    request = parse_job_request(body, "ubuntu:22.04")
    limits = LIMITS[job_type]
    assert request.cpus == min(cpus, limits.max_cpus)
    assert request.memory_gb == min(memory, limits.max_memory_gb)
    assert request.timeout_minutes == min(timeout, limits.max_timeout)
    assert request.disk_gb == min(disk, limits.max_disk_gb)


@given(
    field=st.sampled_from(["cpus", "memory_gb", "timeout_minutes", "disk_gb"]),
    value=st.one_of(
        st.integers(max_value=0),
        st.floats().filter(lambda f: not (f == f and f.is_integer() and f >= 1)),
        st.text(),
        st.booleans(),
        st.lists(st.integers(), max_size=2),
    ),
)
def test_bad_resources_are_rejected_with_their_code(field: str, value: Any) -> None:
    code = {
        "cpus": "invalid_cpus",
        "memory_gb": "invalid_memory",
        "timeout_minutes": "invalid_timeout",
        "disk_gb": "invalid_disk",
    }
    with pytest.raises(ServiceError) as caught:
        parse_job_request({"type": "worker", "command": "x", field: value}, "ubuntu:22.04")
    assert caught.value.status == 400 and caught.value.code == code[field]


def test_defaults_per_type() -> None:
    worker = parse_job_request({"type": "worker", "command": "x"}, "img:1")
    agent = parse_job_request({"type": "agent", "task": "t", "git_branch": "b"}, "img:1")
    assert (worker.cpus, worker.memory_gb, worker.timeout_minutes, worker.image) == (
        2,
        4,
        30,
        "img:1",
    )
    assert (agent.cpus, agent.memory_gb, agent.timeout_minutes) == (2, 4, 60)
    assert (worker.disk_gb, agent.disk_gb) == (2, 2)


@pytest.mark.parametrize(
    "image",
    [
        "ubuntu",
        "ubuntu:22.04",
        "localhost/flashpods-job:latest",
        "registry.example.com:5000/team/app:v1.2",
        "ghcr.io/o/r@sha256:" + "a" * 64,
        "python:3.12-slim@sha256:" + "b" * 64,
    ],
)
def test_valid_images(image: str) -> None:
    assert is_valid_image(image)


@pytest.mark.parametrize(
    "image",
    ["", "Ubuntu", "a b", "x:", ":tag", "a/", "a@sha256:short", "-x", "a;rm -rf /", "a" * 256],
)
def test_invalid_images(image: str) -> None:
    assert not is_valid_image(image)


@given(st.text(max_size=300))
def test_image_validation_is_total_and_bounded(text: str) -> None:
    if is_valid_image(text):
        assert len(text) <= 255 and " " not in text and not text.startswith("-")


# --- artifact names ----------------------------------------------------------------------

_segment = st.text(
    alphabet=st.characters(exclude_characters="/\\\x00", exclude_categories=["Cs"]),
    min_size=1,
    max_size=40,
).filter(lambda s: s == s.strip() and ".." not in s and s != ".")


@given(st.lists(_segment, min_size=1, max_size=4))
def test_valid_artifact_paths(segments: list[str]) -> None:
    assert artifact_name_problem("/".join(segments)) is None


@given(st.text(max_size=300))
def test_artifact_names_never_escape(name: str) -> None:
    if artifact_name_problem(name) is None:
        parts = name.split("/")
        assert all(p not in ("", ".", "..") for p in parts)
        assert "\x00" not in name and "\\" not in name and not name.startswith("/")
        assert all(len(p) <= 255 and p == p.strip() for p in parts)


@pytest.mark.parametrize(
    "bad", ["", "..", "a/../b", "a\x00", "a\\b", " a", "a ", "a//b", "/a", "x" * 256]
)
def test_invalid_artifact_names(bad: str) -> None:
    assert artifact_name_problem(bad) is not None


def test_hidden_artifact_names_are_allowed() -> None:
    assert artifact_name_problem(".env") is None and artifact_name_problem("d/.hidden") is None


# --- state machine -----------------------------------------------------------------------


def test_state_machine_shape() -> None:
    assert set(TRANSITIONS) == set(STATES)
    for ended in ENDED:
        assert TRANSITIONS[ended] == {"cleaning"}
    assert TRANSITIONS["cleaned"] == set()
    assert not can_transition("cancelled", "completed")


@given(st.sampled_from(STATES), st.sampled_from(STATES))
def test_no_way_back(source: str, target: str) -> None:
    order = {state: i for i, state in enumerate(STATES)}
    if can_transition(source, target):
        # Forward only: active -> ended -> cleaning -> cleaned; ended states never mix.
        assert order[target] > order[source]
        assert not (source in ENDED and target in ENDED)
        assert source != "cleaned"


def test_every_state_reaches_cleaned() -> None:
    for start in STATES:
        seen, frontier = {start}, [start]
        while frontier:
            for nxt in TRANSITIONS[frontier.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    frontier.append(nxt)
        assert "cleaned" in seen
    assert all(state in STATES for state in ACTIVE)


# --- admission ---------------------------------------------------------------------------


# Host: 8 CPUs, 16 GB. Expected answers worked out by hand, not by the code's formula.
@pytest.mark.parametrize(
    ("jobs", "cpus", "memory", "admitted", "available"),
    [
        ([], 8, 16, True, None),  # an empty host takes a job of its whole size
        ([(6, 10)], 2, 6, True, None),  # exactly full afterwards
        ([(6, 10)], 3, 1, False, (2, 6)),  # one CPU too many
        ([(2, 4), (2, 4)], 1, 9, False, (4, 8)),  # one GB too many
        ([(4, 8), (4, 8)], 1, 1, False, (0, 0)),  # full
        ([(8, 1)], 1, 1, False, (0, 15)),  # CPUs gone, memory left
        ([(1, 1)] * 7, 1, 1, True, None),
    ],
)
def test_admission_admits_what_fits_and_says_what_is_left(
    jobs: list[tuple[int, int]],
    cpus: int,
    memory: int,
    admitted: bool,
    available: tuple[int, int] | None,
) -> None:
    used = admission.usage_of(jobs)
    if admitted:
        admission.check(used, cpus, memory, 8, 16)
        return
    with pytest.raises(ServiceError) as info:
        admission.check(used, cpus, memory, 8, 16)
    assert (info.value.status, info.value.code) == (429, "insufficient_resources")
    assert info.value.details["running_jobs"] == len(jobs)
    assert info.value.details["requested"] == {"cpus": cpus, "memory_gb": memory}
    assert available is not None
    assert info.value.details["available"] == {"cpus": available[0], "memory_gb": available[1]}


@given(st.lists(st.tuples(st.integers(1, 8), st.integers(1, 16)), max_size=30))
def test_admitting_one_by_one_stays_within_capacity(requests: list[tuple[int, int]]) -> None:
    admitted: list[tuple[int, int]] = []
    for cpus, memory in requests:
        if admission.fits(admission.usage_of(admitted), cpus, memory, 8, 16):
            admitted.append((cpus, memory))
    total = admission.usage_of(admitted)
    assert total.cpus <= 8 and total.memory_gb <= 16


# --- rate limiter ------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_burst_then_refill() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=100, burst=10, clock=clock)
    decisions = [limiter.take("c") for _ in range(11)]
    assert [d.allowed for d in decisions] == [True] * 10 + [False]
    assert decisions[9].remaining == 0 and decisions[0].limit == 100
    assert decisions[10].retry_after == pytest.approx(0.01)
    clock.now += 0.0501  # five tokens back (and a little, for float rounding)
    assert [limiter.take("c").allowed for _ in range(6)] == [True] * 5 + [False]
    assert limiter.take("other").allowed  # buckets are per client


@given(st.lists(st.floats(min_value=0, max_value=0.5), max_size=200))
def test_token_bucket_never_exceeds_rate_plus_burst(gaps: list[float]) -> None:
    clock = Clock()
    limiter = RateLimiter(rate=20, burst=5, clock=clock)
    allowed = 0
    for gap in gaps:
        clock.now += gap
        allowed += limiter.take("c").allowed
    elapsed = clock.now - 1000.0
    assert allowed <= 5 + elapsed * 20 + 1e-6


# --- Range -------------------------------------------------------------------------------


@given(size=st.integers(1, 10_000), data=st.data())
def test_range_within_file(size: int, data: st.DataObject) -> None:
    start = data.draw(st.integers(0, size - 1))
    end = data.draw(st.integers(start, size + 100))
    assert parse_range(f"bytes={start}-{end}", size) == (start, min(end, size - 1))
    assert parse_range(f"bytes={start}-", size) == (start, size - 1)
    suffix = data.draw(st.integers(1, size + 100))
    assert parse_range(f"bytes=-{suffix}", size) == (max(0, size - suffix), size - 1)


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=5-2", "bytes=-0"])
def test_unsatisfiable_ranges(header: str) -> None:
    with pytest.raises(ServiceError) as caught:
        parse_range(header, 100)
    assert caught.value.status == 416 and caught.value.headers["Content-Range"] == "bytes */100"


@pytest.mark.parametrize(
    "header", [None, "", "items=1-2", "bytes=1-2,4-5", "bytes=-", "bytes=\u00b2-", "bytes=-\u0663"]
)
def test_ignored_ranges_mean_whole_file(header: str | None) -> None:
    assert parse_range(header, 100) is None


@pytest.mark.parametrize(
    "header", ["bytes=" + "9" * 5000 + "-", "bytes=0-" + "1" * 19, "bytes=-" + "7" * 5000]
)
def test_overlong_range_offsets_are_bad_requests(header: str) -> None:
    with pytest.raises(ServiceError) as caught:
        parse_range(header, 100)
    assert (caught.value.status, caught.value.code) == (400, "invalid_parameter")
    assert caught.value.details == {"parameter": "Range"}


# --- numbers -----------------------------------------------------------------------------


@given(st.integers(0, 10**18 - 1))
def test_parse_decimal_reads_every_ascii_number(value: int) -> None:
    assert parse_decimal(str(value)) == value
    assert parse_decimal(str(value).zfill(18)) == value


@pytest.mark.parametrize(
    "raw",
    [
        None,
        "",
        " 1",
        "1 ",
        "+1",
        "-1",
        "1.0",
        "1e3",
        "0x10",
        "1_000",
        "\u00b2",
        "\u0663",
        "\uff11",
        "1" * 19,
        "9" * 5000,
    ],
)
def test_parse_decimal_refuses_everything_else(raw: str | None) -> None:
    assert parse_decimal(raw) is None


@given(st.text(max_size=40))
def test_parse_decimal_never_raises(raw: str) -> None:
    value = parse_decimal(raw)
    assert value is None or (raw.isascii() and str(value) == raw.lstrip("0").rjust(1, "0"))


# --- log tails ---------------------------------------------------------------------------


@settings(max_examples=60)
@given(
    lines=st.lists(
        st.text(alphabet=string.printable.replace("\n", "").replace("\r", ""), max_size=300),
        max_size=400,
    ),
    count=st.integers(1, 500),
    trailing_newline=st.booleans(),
)
def test_tail_matches_the_naive_answer(
    tmp_path_factory: pytest.TempPathFactory, lines: list[str], count: int, trailing_newline: bool
) -> None:
    path = tmp_path_factory.mktemp("tail") / "job.log"
    text = "\n".join(lines) + ("\n" if trailing_newline and lines else "")
    path.write_text(text)
    tail = tail_file(path, count)
    expected = text.split("\n")
    if text.endswith("\n"):
        expected = expected[:-1]
    if text == "":
        expected = []
    assert tail.lines == expected[-count:]
    assert tail.total_bytes == len(text.encode())


def test_tail_reads_only_the_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.log"
    line = b"[10:00:00.000] " + b"x" * 85 + b"\n"
    path.write_bytes(line * 200_000)  # 20 MB
    read_sizes: list[int] = []
    real_open = open

    def counting_open(*args: Any, **kwargs: Any) -> Any:
        handle = real_open(*args, **kwargs)
        original = handle.read

        def read(n: int = -1) -> bytes:
            data: bytes = original(n)
            read_sizes.append(len(data))
            return data

        handle.read = read
        return handle

    monkeypatch.setattr("builtins.open", counting_open)
    tail = tail_file(path, 100)
    assert len(tail.lines) == 100 and sum(read_sizes) <= 128 * 1024
    assert tail.total_bytes == len(line) * 200_000 and not tail.truncated


def test_truncated_marker(tmp_path: Path) -> None:
    path = tmp_path / "t.log"
    marker = LOG_TRUNCATED_MARKER.format(limit="50 MB")
    path.write_text(f"[10:00:00.000] a\n[10:00:01.000] {marker}\n")
    assert tail_file(path, 1).truncated
    path.write_text(f"[10:00:00.000] {marker}\n[10:00:01.000] more\n")
    assert not tail_file(path, 5).truncated
    assert tail_file(tmp_path / "missing.log", 5).lines == []


def test_remove_tree_empties_read_only_directories_as_their_owner() -> None:
    """rsync -a keeps a read-only directory's mode; the API (not root) must still delete it."""
    import os
    import pwd
    import shutil
    import tempfile

    from flashpods.api.uploads import remove_tree

    nobody = pwd.getpwnam("nobody")
    root = Path(tempfile.mkdtemp(prefix="flashpods-rm-"))
    try:
        (root / "up" / "ro").mkdir(parents=True)
        (root / "up" / "ro" / "f").write_text("x")
        (root / "up" / "ro" / "link").symlink_to("/etc")
        for path in (root, root / "up", root / "up" / "ro", root / "up" / "ro" / "f"):
            os.chown(path, nobody.pw_uid, nobody.pw_gid, follow_symlinks=False)
        os.chmod(root / "up" / "ro", 0o555)
        os.chmod(root / "up", 0o555)
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            remove_tree(root / "up")
            os._exit(0)
        os.waitpid(child, 0)
        assert not (root / "up").exists() and Path("/etc/passwd").exists()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_tail_of_one_enormous_line_is_bounded(tmp_path: Path) -> None:
    from flashpods.api.logs import MAX_TAIL_BYTES

    path = tmp_path / "long.log"
    path.write_bytes(b"start" + b"y" * (MAX_TAIL_BYTES * 2) + b"end\n")
    tail = tail_file(path, 3)
    assert len(tail.lines) == 1 and tail.lines[0].endswith("end")
    assert len(tail.lines[0]) == MAX_TAIL_BYTES - 1 and "start" not in tail.lines[0]


def _pair() -> tuple[socket.socket, socket.socket]:
    sender, receiver = socket.socketpair()
    sender.settimeout(7.0)  # as a request handler's connection
    return sender, receiver


def test_send_file_sends_the_range_and_restores_the_socket(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    (tmp_path / "f").write_bytes(data)
    sender, receiver = _pair()
    got = bytearray()
    reader = threading.Thread(
        target=lambda: [got.extend(c) for c in iter(lambda: receiver.recv(1 << 16), b"")]
    )
    reader.start()
    with open(tmp_path / "f", "rb") as handle:
        send_file(sender, handle.fileno(), 12345, len(data) - 12345 - 7, 5)
    assert sender.gettimeout() == 7.0
    sender.close()
    reader.join(10)
    receiver.close()
    assert bytes(got) == data[12345:-7]


def test_send_file_over_tcp_uncorks_so_the_tail_leaves_at_once(tmp_path: Path) -> None:
    data = os.urandom((1 << 20) + 123)  # not a whole number of segments
    (tmp_path / "f").write_bytes(data)
    with socket.create_server(("127.0.0.1", 0)) as server:
        sender = socket.create_connection(server.getsockname())
        receiver, _ = server.accept()
    sender.settimeout(7.0)
    got = bytearray()

    def read_all() -> None:
        while len(got) < len(data):
            got.extend(receiver.recv(1 << 16))

    reader = threading.Thread(target=read_all)
    reader.start()
    with open(tmp_path / "f", "rb") as handle:
        send_file(sender, handle.fileno(), 0, len(data), 5)
    # Left corked, the last partial segment would wait for more data (or 200 ms).
    assert sender.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK) == 0
    reader.join(10)
    assert bytes(got) == data
    assert sender.gettimeout() == 7.0
    sender.close()
    receiver.close()


def test_send_file_gives_up_on_a_client_that_reads_nothing(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(os.urandom(16 << 20))  # more than both socket buffers
    sender, receiver = _pair()
    with open(tmp_path / "f", "rb") as handle, pytest.raises(TimeoutError):
        send_file(sender, handle.fileno(), 0, 16 << 20, 0.2)
    assert sender.gettimeout() == 7.0
    sender.close()
    receiver.close()


def test_send_file_refuses_to_send_less_than_promised(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"short")
    sender, receiver = _pair()
    with open(tmp_path / "f", "rb") as handle, pytest.raises(FileShrankError):
        send_file(sender, handle.fileno(), 0, 100, 5)
    assert receiver.recv(100) == b"short"
    sender.close()
    receiver.close()
